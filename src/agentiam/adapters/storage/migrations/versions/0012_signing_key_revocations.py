"""The revocation feed carries signing-key retirements: ``revocations`` rows of kind
``signing_key`` (subject: the retired key's ``kid``; services/revocations.py).

No column changes: this revision marks a change of what the table may hold. A replica
of an older release cannot read such a row (its sync would fail on the unknown kind,
its revocation set would go stale and it would refuse every token), so the schema bump
is what keeps it out of a mixed fleet: its ``/readyz`` reports the schema as not
current, and its CLI refuses to run, once the database is at this revision. The
downgrade deletes those rows so that the older release reads the feed again (the
retired keys stay retired: their ``unpublish_at`` keeps them out of the JWKS).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM revocations WHERE kind = 'signing_key'"))
