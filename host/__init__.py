"""EdgeProp host: compile models for microcontrollers, flash them, stream data, record runs."""

__version__ = "0.1.0"
