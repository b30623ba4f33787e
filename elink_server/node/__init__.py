"""One node of several worker processes (docs/architecture.md).

:mod:`.supervisor` starts and watches the workers (:mod:`.worker`) and runs
the :mod:`.hub`, which keeps the node-wide tables and routes between the
workers over :mod:`.link` frames; each worker's side of that is the
:mod:`.worker_router`, the services' router.  :mod:`.control` is the
control socket of ``elink-server status``; :mod:`.codec` turns packets and
session states into link values.
"""
