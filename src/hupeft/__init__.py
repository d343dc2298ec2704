"""hupeft: Hybrid and Unitary PEFT, a runnable companion to arXiv 2507.18076."""

__version__ = "0.1.0"
