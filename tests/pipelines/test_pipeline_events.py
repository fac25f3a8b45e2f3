"""A transition is told to the pages of its pipeline neighbours, so their pipeline card refreshes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer

from experiments.actors import Actor
from experiments.events import experiment_group
from experiments.pipelines.services import dependency_add
from experiments.services import experiment_create, experiment_transition

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_downstream_page_hears_that_its_upstream_moved() -> None:
    teacher = experiment_create(name="teacher", recipe="digits")
    student = experiment_create(name="student", recipe="distill")
    bystander = experiment_create(name="bystander", recipe="digits")
    dependency_add(downstream=student, upstream=teacher)

    async def listen_while_queueing() -> tuple[dict[str, Any], bool]:
        layer = get_channel_layer()
        assert layer is not None
        student_page, other_page = await layer.new_channel(), await layer.new_channel()
        await layer.group_add(experiment_group(student.pk), student_page)
        await layer.group_add(experiment_group(bystander.pk), other_page)
        try:
            await sync_to_async(experiment_transition)(
                experiment_id=teacher.pk, event="queue", actor=Actor.system("test")
            )
            message: dict[str, Any] = await asyncio.wait_for(layer.receive(student_page), timeout=5)
            try:
                await asyncio.wait_for(layer.receive(other_page), timeout=0.5)
                heard = True
            except TimeoutError:
                heard = False
            return message, heard
        finally:
            await layer.group_discard(experiment_group(student.pk), student_page)
            await layer.group_discard(experiment_group(bystander.pk), other_page)

    message, bystander_heard = async_to_sync(listen_while_queueing)()
    assert message == {"type": "pipeline.changed", "experiment_id": teacher.pk, "target": "queued"}
    assert not bystander_heard
