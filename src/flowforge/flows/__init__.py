"""Density estimation: the `Flow`, its base distributions, the model builders, the
reference models a density is compared with, and saving and loading a flow."""
