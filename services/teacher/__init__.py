"""The privileged teacher: corrections of failed trajectories and reasons for demonstrations.

`service.TeacherService` holds the logic (transport-free); `server` is the gRPC servicer; `client`
a small typed client; `backends` the oracle (environment experts) and the LLM teacher; `leak` the
leak detector; `levels` the realizability levels.
"""
