"""Docker Swarm: the same compose sources, deployed as a stack.

* keys: one table of what Swarm does with each compose key and what onevps
  does about it (kept, converted, dropped, refused), and swarm-check's rules.
* convert, render: the stack file for `docker stack deploy` as a pure
  function of the compose file, nginx files and settings, returning what it
  used (configs, volumes, networks) and met (findings, refusals).
* check: `inv swarm-check`, every finding and every refusal.
* deploy, status: build, tag by content, push, `docker stack deploy`, wait,
  report a rollback; on a Target (LocalTarget here, server.ServerTarget for
  `fab`, imported from onevps.swarm.server).

* nodes, cluster, registry: several servers (SWARM_MANAGER, SWARM_WORKERS):
  the pure decisions and the `fab swarm-nodes` table (nodes), `fab
  swarm-setup` (cluster), the registry with client certificates the manager
  runs for the workers (registry).

The argv lists are built in onevps.commands.swarm and onevps.commands.nodes.
"""

from .check import check, findings, report
from .convert import ROUTES_FILE, STACK_DIR, STACK_FILE, plain, tag_var
from .deploy import DeployResult, LocalTarget, Target, content_tag, deploy, image_repo
from .keys import KEYS, RULES, Rule
from .render import Finding, Rendered, examine, render, stack_networks, write
from .status import ServiceState, status_rows, wait

__all__ = ["check", "findings", "report", "ROUTES_FILE", "STACK_DIR", "STACK_FILE", "plain", "tag_var",
           "DeployResult", "LocalTarget", "Target", "content_tag", "deploy", "image_repo", "KEYS", "RULES", "Rule",
           "Finding", "Rendered", "examine", "render", "stack_networks", "write", "ServiceState", "status_rows",
           "wait"]
