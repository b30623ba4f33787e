"""``elink-bench``: load scenarios that prove (or disprove) the capacity
claims of an e-Link node, next to a plain Trio relay measured in the same run.

Modules, one concern each:

* ``cli``        -- the command line and the scenarios' orchestration;
* ``targets``    -- the server under test (or the plain relay) as a child
  process, and the bench accounts;
* ``relay``      -- the plain Trio relay (the baseline);
* ``generator``  -- a load-generator process: many sessions on raw sockets;
* ``sessions``   -- one session's driver (e-Link or plain framing);
* ``procstat``   -- memory and CPU read from /proc;
* ``report``     -- results JSON, markdown tables, the plot, the progress display.

New scenarios (``priority``, ``fanout``) add a subcommand in ``cli`` and, if
they need new traffic, a step kind in ``generator``.
"""
