"""ferry's guest SDK for Python plugins (built with componentize-py).

A plugin is only its rules: a module that imports one of the contract
modules and names its exports with them.

* ``ferry_plugin.user`` - ``ferry:transform@0.1.0``, interface
  ``transform-user`` (the seed's ``legacy-user`` -> ``new-user``), worlds
  ``user-transform`` and ``user-transform-keyed``;
* ``ferry_plugin.row`` - ``ferry:transform@0.2.0``, interface
  ``transform-row`` (typed rows of any table), world ``row-transform``.

Errors are values in the contract; in Python they are exceptions: raise
``Reject(reason)`` to dead-letter the row (the run goes on) or
``Fatal(reason)`` to stop the run before the batch. Any other exception is a
bug in the plugin: it traps, and ferry dead-letters the row with the trap.
"""


class Reject(Exception):
    """The row is bad: dead-lettered with this reason; the run goes on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Fatal(Exception):
    """The run itself is wrong: it stops before the current batch."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
