"""Running a study's trials, in layers that import downward only:

interrupts (Ctrl-C as a flag) -> budget (pure counting, the target on the study) ->
recovery (stale trials failed and retried) -> worker (one process's loop) ->
launcher (`vae-tune run`: the study started, trials run here or in local workers).
"""
