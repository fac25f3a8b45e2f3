"""Drop the single-column indexes of the metric tables' foreign keys (each is the head of a wider index).

The unique (run, name, step) and the series index (experiment, name, step) of the points, and
the unique (run, name, level, bucket) of the roll-ups, serve every lookup by run or experiment;
the extra indexes only cost every metric insert. The state changes to db_index=False; the
database drops the indexes by name (DROP INDEX), where AlterField would copy the whole points
table on SQLite.
"""

import django.db.models.deletion
from django.db import migrations, models

# (model, field) whose own index goes.
FIELDS = (("metricpoint", "experiment"), ("metricpoint", "run"), ("metricrollup", "run"))


def _indexes(apps, schema_editor):
    for model_name, field_name in FIELDS:
        model = apps.get_model("experiments", model_name)
        table = model._meta.db_table
        column = model._meta.get_field(field_name).column
        yield schema_editor.quote_name(schema_editor._create_index_name(table, [column], suffix="")), table, column


def drop_indexes(apps, schema_editor):
    for name, _table, _column in _indexes(apps, schema_editor):
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


def create_indexes(apps, schema_editor):
    for name, table, column in _indexes(apps, schema_editor):
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {schema_editor.quote_name(table)} "
            f"({schema_editor.quote_name(column)})"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("experiments", "0014_apitoken_run_tokens_are_signed"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(drop_indexes, create_indexes)],
            state_operations=[
                migrations.AlterField(
                    model_name="metricpoint",
                    name="experiment",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="points",
                        to="experiments.experiment",
                    ),
                ),
                migrations.AlterField(
                    model_name="metricpoint",
                    name="run",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="points",
                        to="experiments.run",
                    ),
                ),
                migrations.AlterField(
                    model_name="metricrollup",
                    name="run",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="rollups",
                        to="experiments.run",
                    ),
                ),
            ],
        ),
    ]
