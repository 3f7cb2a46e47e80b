"""Plain helpers the tests share (functions and data, never fixtures: those are in
tests/conftest.py). One module per area they speak to."""
