"""What every test folder shares: the data, the CLIs, a real server, an own Redis.

Test folders import from here, never from another folder's conftest or support module:

- ``cli``: ROOT, BIN, REDIS_URL, the MovieLens copy, ``run_cli``, ``train_model``
- ``server``: ``start_server``, the one rbm-serve launcher
- ``redis``: ``OwnRedis``, ``free_port``, ``wait_for``
- ``calls``: ``recommend``, ``update``, ``try_update``, ``Load``
- ``metrics``: a server's /metrics: ``metric``, ``histogram``
- ``registry``: ``copy_registry``, ``register_copy``

The fixtures built on them (movielens, trained, redis_prefix, own_redis, server) are in
tests/conftest.py, which pytest shares with every folder.
"""
