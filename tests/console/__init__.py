"""Tests of gateway/console/: the operator console, over HTTP and in a browser."""
