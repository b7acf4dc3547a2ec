"""What a run needs from the machine: devices, signals, atomic files and size budgets.

Importing this package (and `flowforge.runtime.interrupts`) does not import torch, so
the command line can take charge of signals first."""
