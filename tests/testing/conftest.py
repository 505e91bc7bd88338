"""The testing plugin's own tests use its fixtures (loaded for the whole suite by tests/conftest.py) and run the
user test of docs/TESTING.md in a fresh folder of its own."""
