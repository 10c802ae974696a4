"""PVE's reauth_user_for_user_modification before TFA and password changes: root@pam's
second factors and password are root@pam's alone (even for a User.Modify holder), anyone
else confirms with their own current password, wrong ones count for the login limiter."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from binome.access.model import AccessConfig, User
from binome.access.ratelimit import LoginRateLimiter
from binome.api.errors import ApiError, ParamError, PermissionDenied
from binome.api.methods.common import reauth_user_for_user_modification

CFG = AccessConfig(users={"admin@pve": User("admin@pve", superuser=True),
                          "alice@pve": User("alice@pve")})
PASSWORDS = {"admin@pve": "admin-password", "alice@pve": "alice-password"}


def _ctx(caller: str) -> Any:
    checked: list[str] = []

    async def config() -> AccessConfig:
        return CFG

    async def verify_password(userid: str, password: str, pam: Any) -> bool:
        checked.append(userid)
        return PASSWORDS.get(userid) == password

    access = SimpleNamespace(config=config, verify_password=verify_password,
                             limiter=LoginRateLimiter(), now=lambda: 1000.0)
    return SimpleNamespace(userid=caller, request=None, checked=checked,
                           services=SimpleNamespace(access=access))


async def test_root_pam_is_root_pam_s_alone() -> None:
    ctx = _ctx("admin@pve")
    with pytest.raises(PermissionDenied) as denied:
        await reauth_user_for_user_modification(ctx, "root@pam", "admin-password")
    assert denied.value.status == 403 and denied.value.message == "Permission check failed"
    assert ctx.checked == []            # refused before any password is tried
    root = _ctx("root@pam")
    await reauth_user_for_user_modification(root, "root@pam", None)
    await reauth_user_for_user_modification(root, "alice@pve", None)    # no confirmation
    assert root.checked == []


async def test_others_confirm_with_their_own_password() -> None:
    ctx = _ctx("admin@pve")
    with pytest.raises(ParamError) as missing:
        await reauth_user_for_user_modification(ctx, "alice@pve", None,
                                                "confirmation-password")
    assert missing.value.errors == {"confirmation-password":
                                    "password is required to modify user"}
    with pytest.raises(ApiError) as wrong:
        await reauth_user_for_user_modification(ctx, "alice@pve", "alice-password")
    assert wrong.value.status == 500 and wrong.value.message == "authentication failure"
    await reauth_user_for_user_modification(ctx, "alice@pve", "admin-password")
    assert ctx.checked == ["admin@pve", "admin@pve"]    # the caller's, not the target's
    with pytest.raises(ApiError) as unknown:
        await reauth_user_for_user_modification(ctx, "nobody@pve", "admin-password")
    assert unknown.value.message == "no such user ('nobody@pve')"


async def test_wrong_confirmations_are_rate_limited() -> None:
    ctx = _ctx("alice@pve")
    for _ in range(20):
        try:
            await reauth_user_for_user_modification(ctx, "alice@pve", "guess")
        except ApiError as exc:
            if exc.message != "authentication failure":
                break
    else:
        raise AssertionError("twenty wrong confirmations were all tried")
    tried = len(ctx.checked)
    with pytest.raises(ApiError):
        await reauth_user_for_user_modification(ctx, "alice@pve", "alice-password")
    assert len(ctx.checked) == tried     # locked out: not even tried
