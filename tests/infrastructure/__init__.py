"""Tests of The app factory, settings, database, migrations, logs, and the service as run."""
