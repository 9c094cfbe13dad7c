"""What every test folder shares: the data, the CLIs, a real server, an own Redis.

Test folders import from here, never from another folder's conftest.
"""
