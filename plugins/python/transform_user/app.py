"""The seed's ``transformUser`` in Python, byte for byte the Rust plugin's.

Rules (``shared/seed/data-migration.md``; the seed is JavaScript, so its
semantics are JavaScript's, made exact - the conformance test runs this
plugin, the Rust one and the JavaScript one on the same rows):

* ``id`` -> ``"user_" + id``;
* ``name`` split at the FIRST space; a NULL name is rejected;
* ``email`` lowercased (full Unicode rules); a NULL email is rejected;
* ``created_at`` passed through (microseconds); NULL is rejected;
* ``metadata`` NULL or ``""`` -> ``{}``; invalid JSON -> rejected; JSON
  ``null`` -> rejected; any other non-object -> defaults;
* ``theme = metadata.theme || 'light'`` (JS-falsy), ``notifications =
  metadata.notifications ?? true``; written as ``JSON.stringify`` writes them.
"""

import ferry_plugin.user as ferry
from ferry_plugin import jsjson
from ferry_plugin import Reject

_MISSING = jsjson.MISSING


def transform(row: ferry.LegacyUser) -> ferry.NewUser:
    if row.name is None:
        raise Reject("name is NULL (the seed's name.split(' ') throws a TypeError)")
    if row.email is None:
        raise Reject("email is NULL (the seed's email.toLowerCase() throws a TypeError)")
    if row.created_at is None:
        raise Reject("created_at is NULL (the new users table requires it)")
    first, _, last = row.name.partition(" ")
    return ferry.NewUser(
        id=target_key(row.id),
        first_name=first,
        last_name=last,
        email=row.email.lower(),
        created_at=row.created_at,
        settings=settings(row.metadata),
    )


def target_key(id: int) -> str:
    return f"user_{id}"


def settings(metadata):
    theme = notifications = _MISSING
    if metadata:
        try:
            doc = jsjson.parse(metadata)
        except ValueError as e:
            raise Reject(f"metadata is not valid JSON: {e}")
        if doc is None:
            raise Reject("metadata is JSON null (the seed reads null.theme and throws a TypeError)")
        if isinstance(doc, dict):
            theme = doc.get("theme", _MISSING)
            notifications = doc.get("notifications", _MISSING)
    if theme is _MISSING or jsjson.falsy(theme):
        theme = "light"
    if notifications is _MISSING or notifications is None:
        notifications = True
    return '{"theme":' + jsjson.stringify(theme) + ',"notifications":' + jsjson.stringify(notifications) + "}"


TransformUser = ferry.transform_user(transform)
UserKey = ferry.user_key(target_key)
