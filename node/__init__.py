"""One peer, in three rooms that import one way: ``node.learning`` (the learning kit the simulator
shares: data, models, training, algorithms, attacks, ``Learner``) -> ``node.peer`` (the networked
peer process, ``python -m node``) -> ``node.launcher`` (many peer processes on one machine).
``node.config`` is the one schema of every setting."""
