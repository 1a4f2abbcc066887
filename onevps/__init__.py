"""onevps: many Python apps on one server, done right.

The logic behind tasks.py (invoke, local work) and fabfile.py (fabric, the
server). Data flows one way: settings + registry -> argv lists -> one runner.
"""

__version__ = "0.1.0"
