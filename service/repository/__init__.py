"""The model repository: which models and versions serve, kept in step with the disk.

``registry.py`` loads and reloads; ``snapshot.py`` is what serves at one instant; ``model_version.py``
one loaded version; ``version_policy.py`` which versions on disk serve; ``rollout.py`` how a model's
traffic is shared between its versions; ``shared_state.py`` the repository API's state (unloaded
models, rollouts) shared by every process; ``watcher.py`` the rescanning loop every serving process runs.
"""
