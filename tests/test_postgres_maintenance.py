"""Housekeeping and the expiry cleanup, in processes that send as well as those that receive."""

from __future__ import annotations

import pytest

from tests.support.pgtools import Admin, make_layer, run
from tests.support.polling import await_for

pytestmark = pytest.mark.postgres


def test_a_process_that_only_sends_removes_expired_rows_and_memberships(
    app: str, prefix: str, admin: Admin
) -> None:
    layer = make_layer(
        app, prefix=prefix, expiry=0.2, group_expiry=0.2, cleanup_interval=0.1, sweep_interval=0.05
    )

    async def scenario() -> None:
        await layer.group_add("nobody-reads", "unread.member")
        for n in range(20):
            await layer.send("unread.channel", {"n": n})
        assert admin.table_count(prefix + "message") == 20
        await await_for(
            lambda: admin.table_count(prefix + "message") == 0, "expired messages deleted"
        )
        await await_for(
            lambda: admin.table_count(prefix + "group_member") == 0, "expired memberships deleted"
        )
        await layer.close()

    run(scenario())
