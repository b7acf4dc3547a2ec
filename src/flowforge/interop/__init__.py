"""flowforge inside other tools: Pyro guides (`flowforge.interop.pyro`) and sbi density
estimators (`flowforge.interop.sbi`). Each module needs its optional extra (``pip install
flowforge[pyro]`` or ``flowforge[sbi]``) and says so in one line when it is missing."""
