"""Readable names for runs that were created without one, such as "amber-heron"."""

from __future__ import annotations

import random

_ADJECTIVES = (
    "amber azure bold brisk calm candid cobalt coral crimson daring dusty eager emerald fearless "
    "gentle golden hazel honest ivory jade jolly keen lively lucid mellow misty nimble olive "
    "patient proud quiet rapid rosy russet sage scarlet silver steady sunny swift tawny teal "
    "tidy vivid warm witty zesty"
).split()
_ANIMALS = (
    "albatross badger beaver bison bobcat caribou condor corgi coyote crane dingo dolphin "
    "falcon ferret finch gazelle gecko heron ibex jackal koala lemur lynx marmot mink moose "
    "narwhal ocelot orca osprey otter panda pelican puffin quail raven salmon seal stoat swan "
    "tapir toucan walrus wombat yak"
).split()


def make_run_name() -> str:
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_ANIMALS)}"
