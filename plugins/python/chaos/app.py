"""A Python plugin that misbehaves on purpose, so the test suite can prove
the host contains plugins of any language. It applies the seed's rules
(``transform_user``), except for rows whose ``name`` is a trigger:

* ``chaos:panic`` - raises an exception the SDK does not turn into an error
  value (a trap);
* ``chaos:loop`` - never returns (the CPU deadline must stop it);
* ``chaos:alloc`` - allocates without bound (the memory cap must stop it);
* ``chaos:recurse`` - recurses without bound;
* ``chaos:huge`` - returns a gigantic row (the memory cap must stop it);
* ``chaos:fatal`` - raises ``Fatal``, which must stop the run cleanly;
* ``chaos:escape`` - tries the world outside through WASI (a file, the
  environment, a socket, the clock, randomness) and writes what it got
  into ``settings``, so the test can check that nothing was granted.
"""

import json
import os
import random
import socket
import time

import ferry_plugin.user as ferry
from ferry_plugin import Fatal
from transform_user.app import transform as seed


def attempt(what):
    try:
        return what()
    except BaseException as e:  # noqa: BLE001 - every failure is the answer
        return f"denied: {type(e).__name__}"


def read_file():
    with open("/etc/passwd") as f:
        return f"read {len(f.read())} bytes"


def connect():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", 5432))
    return "connected"


def escape(row):
    seen = {
        "file": attempt(read_file),
        "listdir": attempt(lambda: f"listed {len(os.listdir('/'))} entries"),
        "env": len(os.environ),
        "socket": attempt(connect),
        "time": time.time(),
        "random": random.random(),
        "urandom": attempt(lambda: os.urandom(8).hex()),
    }
    return ferry.NewUser(
        id=f"user_{row.id}",
        first_name="escape",
        last_name="",
        email="escape@example.com",
        created_at=0,
        settings=json.dumps(seen, sort_keys=True),
    )


def recurse(n):
    return recurse(n + 1) + 1


def transform(row: ferry.LegacyUser) -> ferry.NewUser:
    name = row.name
    if name == "chaos:panic":
        raise RuntimeError(f"chaos plugin: deliberate panic on row {row.id}")
    if name == "chaos:loop":
        x = row.id
        while True:
            x = (x * 6364136223846793005 + 1) % (1 << 64)
    if name == "chaos:alloc":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if name == "chaos:recurse":
        return recurse(0)
    if name == "chaos:huge":
        return ferry.NewUser(
            id=f"user_{row.id}", first_name="", last_name="", email="", created_at=0, settings="x" * (1 << 30)
        )
    if name == "chaos:fatal":
        raise Fatal(f"chaos plugin: deliberate fatal on row {row.id}")
    if name == "chaos:escape":
        return escape(row)
    return seed(row)


TransformUser = ferry.transform_user(transform)
