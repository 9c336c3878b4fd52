"""Jobs on Ray workers (--ray, --ray-workers, --ray-address): the head's pool and the actor.

Imported only when a Ray flag is given; ray itself is an optional extra.
"""
