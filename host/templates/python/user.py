"""{{name}}: a ferry ``transform-user`` plugin (the seed's ``legacy-user`` ->
``new-user``). ``id`` -> ``user_<id>``, the name split at its first space,
the e-mail lowercased, ``created_at`` kept (microseconds), ``settings``
``{}``; a NULL name, e-mail or creation time is rejected (dead-lettered)."""

import ferry_plugin.user as ferry
from ferry_plugin import Reject


def transform(row: ferry.LegacyUser) -> ferry.NewUser:
    for what in ("name", "email", "created_at"):
        if getattr(row, what) is None:
            raise Reject(f"{what} is NULL")
    first, _, last = row.name.partition(" ")
    return ferry.NewUser(
        id=target_key(row.id),
        first_name=first,
        last_name=last,
        email=row.email.lower(),
        created_at=row.created_at,
        settings="{}",
    )


def target_key(id: int) -> str:
    return f"user_{id}"


TransformUser = ferry.transform_user(transform)
UserKey = ferry.user_key(target_key)
