"""The e-Link conformance suite: checks *any* server that speaks e-Link
against docs/protocol.md, over the network only, and reports per case.

Run it with ``elink-conformance HOST:PORT --password PW`` (docs/conformance.md).
The parts, in the order a reader may want them:

* :mod:`.requirements` -- the MUST/SHOULD sentences of the spec, with ids;
* :mod:`.case` -- the case registry, options and what a running case gets;
* :mod:`.cases` -- the cases, one module per part of the spec;
* :mod:`.uncovered` -- the requirements no case can observe, with reasons;
* :mod:`.wire`, :mod:`.handshake`, :mod:`.session` -- the suite's own client,
  which can send wrong bytes on purpose and checks every byte it receives;
* :mod:`.runner`, :mod:`.report`, :mod:`.cli` -- running and reporting.

It never imports the server (``tests/test_layering.py`` checks that).
"""
