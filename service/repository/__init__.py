"""The model repository: which models and versions serve, kept in step with the disk.

``registry.py`` loads and reloads; ``snapshot.py`` is what serves at one instant; ``model_version.py``
one loaded version; ``version_policy.py`` which versions on disk serve; ``unloaded_models.py`` the
repository API's state shared by every process; ``watcher.py`` the rescanning loop every serving
process runs.
"""
