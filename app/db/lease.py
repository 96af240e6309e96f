"""Named leases on the database's clock: one holder at a time across replicas, handed over
when the holder stops renewing (it died, or lost the database)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.clock import db_now
from app.db.models import Lease


async def try_acquire(session: AsyncSession, *, name: str, holder: str, ttl: float) -> bool:
    """Take or renew the lease for `ttl` seconds; False while another holder's is unexpired."""
    now = await db_now(session)
    expires_at = now + timedelta(seconds=ttl)
    created = await session.scalar(
        insert(Lease)
        .values(name=name, holder=holder, expires_at=expires_at)
        .on_conflict_do_nothing()
        .returning(Lease.name)
    )
    if created is not None:
        return True
    lease = (await session.scalars(select(Lease).where(Lease.name == name).with_for_update())).one()
    if lease.holder != holder and lease.expires_at > now:
        return False
    lease.holder, lease.expires_at = holder, expires_at
    return True
