"""The detection evaluation's pure half (issue 8, item 5): the simulated organisation
and its workflows (``world``), benign sessions in time (``workload``), the attack
scenarios (``scenarios``) and the figures (``metrics``). The runner that drives a real
control plane with them is ``agentiam simulate`` (``agentiam.cli.simulate``)."""
