"""The groups people are put in, with the experiment permissions each holds."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission

RESEARCHERS_GROUP = "Researchers"

# Researchers create experiments and drive them by hand; driving runs ("operate") stays
# with the scheduler and workers.
RESEARCHER_PERMISSIONS: tuple[str, ...] = (
    "add_experiment",
    "view_experiment",
    "queue_experiment",
    "cancel_experiment",
    "promote_experiment",
    "rollback_experiment",
    "retrain_experiment",
    "retry_experiment",
    # Researchers label served predictions, and their labels count (canaries, curated datasets).
    "give_feedback",
    "give_trusted_feedback",
)


def researcher_group_ensure() -> Group:
    """Create (or complete) the Researchers group with its experiment permissions; idempotent."""
    group, _ = Group.objects.get_or_create(name=RESEARCHERS_GROUP)
    perms = Permission.objects.filter(
        content_type__app_label="experiments", codename__in=RESEARCHER_PERMISSIONS
    )
    missing = set(RESEARCHER_PERMISSIONS) - {p.codename for p in perms}
    if missing:
        # Permissions are created by migrate's post_migrate signal; without them the group is useless.
        raise RuntimeError(f"permissions missing (run migrate first): {', '.join(sorted(missing))}")
    group.permissions.add(*perms)
    return group
