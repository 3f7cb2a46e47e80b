"""Plain helpers the tests share (functions and data, never fixtures: those live in
conftest.py files). One module per area they speak to."""
