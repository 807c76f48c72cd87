"""`python -m pipeline.cli`."""
from .main import main

main()
