"""The neutral core: what the stages exchange and agree on, importing none of them.

lmsweep's stages run in one direction (docs/development.md#package-layering): jobs (spec → plan) <- results
(rows) <- runner (workers) <- submit (schedulers), each importing only the stages below it, and all of them
this package and the top-level helpers beside it (lmsweep.errors, lmsweep.console). What more than one stage
must know lives here: the task contract and registry (task.py, task_registry.py), the engine contract and
registry (engine.py), the scheduler names and their `execution.<name>` block models (schedulers.py) and the
test hook that kills a process at a named point (kill_points.py). The plug-ins themselves stay with the stage
that runs them (runner/tasks/, runner/engines/, submit/backends/); a registry here finds them by module name
(`importlib.import_module` of a string), which is the only way this package reaches a stage at run time.
tests/test_import_graph.py holds every module to that.
"""
