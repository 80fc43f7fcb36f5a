"""The API-key middleware: open paths, and the key id a valid key leaves in the request state."""

from __future__ import annotations

import asyncio

from serving.middleware import ApiKeyAuth, key_id

KEY = "vk-unit-test-key-0123456789"


def _call(auth: ApiKeyAuth, path: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, dict]:
    seen: dict = {}
    sent: list[dict] = []

    async def app(scope, receive, send):
        seen.update(scope.get("state", {}))
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    auth.app = app
    scope = {"type": "http", "path": path, "headers": list(headers)}
    asyncio.run(auth(scope, None, send))
    return sent[0]["status"], seen


def test_the_root_page_is_open_but_not_everything_under_it() -> None:
    auth = ApiKeyAuth(None, [KEY], ("/", "/ui", "/health"))
    assert _call(auth, "/")[0] == 200
    assert _call(auth, "/ui/app.js")[0] == 200 and _call(auth, "/health/ready")[0] == 200
    for closed in ("/jobs", "/model", "/analyze", "/uix", "/artifacts/a/b.png"):
        assert _call(auth, closed)[0] == 401, closed


def test_a_valid_key_leaves_its_id_never_the_key() -> None:
    auth = ApiKeyAuth(None, [KEY, "vk-another-key-9876543210"], ("/",))
    status, state = _call(auth, "/jobs", [(b"x-api-key", KEY.encode())])
    assert status == 200 and state["api_key_id"] == key_id(KEY) and KEY not in str(state)
    _, other = _call(auth, "/jobs", [(b"authorization", b"Bearer vk-another-key-9876543210")])
    assert other["api_key_id"] != state["api_key_id"] and len(other["api_key_id"]) == 16
    # On an open path a valid key still says whose request it is; a wrong one says nothing.
    assert _call(auth, "/", [(b"x-api-key", KEY.encode())])[1]["api_key_id"] == key_id(KEY)
    assert "api_key_id" not in _call(auth, "/", [(b"x-api-key", b"vk-wrong-key-000000000")])[1]
