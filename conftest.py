# Shared fixtures for every test folder (tests/ and each app's and adapter's tests/).
pytest_plugins = ["tests.fixtures"]
