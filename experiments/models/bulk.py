"""Row-by-row values in one UPDATE: a CASE on the primary key, written as SQL once.

Django's own Case(When(pk=...)) builds and resolves one lookup per row; at a scheduler pass
of 64 rows that cost more than the statement itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import connections
from django.db.models import Field, Model
from django.db.models.expressions import RawSQL


def case_by_pk(
    model: type[Model], field_name: str, values: Mapping[Any, Any], *, using: str = "default"
) -> RawSQL:
    """Return `CASE <pk> WHEN <pk> THEN <value> ... END` for an update() of `field_name`, one value per row."""
    connection = connections[using]
    pk_field = model._meta.pk
    assert pk_field is not None
    target: Field[Any, Any] = model._meta.get_field(field_name)  # type: ignore[assignment]
    whens = " ".join(["WHEN %s THEN %s"] * len(values))
    params: list[Any] = []
    for pk, value in values.items():
        params.append(pk_field.get_db_prep_value(pk, connection))
        params.append(target.get_db_prep_value(value, connection))
    sql = f"CASE {connection.ops.quote_name(str(pk_field.column))} {whens} END"
    return RawSQL(sql, params, output_field=target)
