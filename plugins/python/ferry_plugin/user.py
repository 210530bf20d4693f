"""The ``transform-user`` contract (``ferry:transform@0.1.0``) for Python.

    import ferry_plugin.user as ferry

    def transform(row: ferry.LegacyUser) -> ferry.NewUser: ...
    def target_key(id: int) -> str: ...          # optional

    TransformUser = ferry.transform_user(transform)
    UserKey = ferry.user_key(target_key)         # world user-transform-keyed

componentize-py looks the export classes up by name in the plugin's module,
so the two assignments are what makes the component.
"""

from componentize_py_types import Err, Ok

from wit_world.exports import transform_user as _contract
from wit_world.imports.types import RowError_Fatal, RowError_Reject

from . import Fatal, Reject

LegacyUser = _contract.LegacyUser
NewUser = _contract.NewUser

__all__ = ["LegacyUser", "NewUser", "Reject", "Fatal", "transform_user", "user_key"]


def _error(e: Exception):
    if isinstance(e, Reject):
        return RowError_Reject(e.reason)
    return RowError_Fatal(e.reason)


def transform_user(transform):
    """The ``transform-user`` export of a rules function ``LegacyUser -> NewUser``."""

    class TransformUser:
        def transform(self, row):
            try:
                return transform(row)
            except (Reject, Fatal) as e:
                raise Err(_error(e))

        def transform_batch(self, rows):
            out = []
            for row in rows:
                try:
                    out.append(Ok(transform(row)))
                except (Reject, Fatal) as e:
                    out.append(Err(_error(e)))
            return out

    return TransformUser


def user_key(target_key):
    """The ``user-key`` export of a function ``legacy id -> new key``."""

    class UserKey:
        def target_key(self, id):
            try:
                return target_key(id)
            except (Reject, Fatal) as e:
                raise Err(_error(e))

    return UserKey
