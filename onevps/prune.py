"""`inv prune` / `fab prune`: keep the disk where it was, keep rollbacks possible.

Per app: keep the image its container runs, `latest`, and the newest N
images (deploys tag each as `deploy-<time>`); remove the others' tags.
Tiers: keep the current content tags and every tier image whose layers begin
any kept image (so a tier a kept app is built on is never deleted); remove
the other `c-<hash>` tags. Then dangling images go, and the build cache is
trimmed above a size limit. `--dry-run` lists what would go and the room it
would free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import disk, tiers
from .commands import docker_cmd
from .config import Settings
from .project import Project
from .registry import Registry
from .runner import Runner


@dataclass(frozen=True)
class Image:
    id: str
    tags: tuple[str, ...]  # repo:tag
    created: str
    layers: tuple[str, ...]


@dataclass
class Plan:
    remove: list[str] = field(default_factory=list)  # repo:tag references to untag/delete
    kept: list[str] = field(default_factory=list)
    freed: int = 0


def _repo(ref: str) -> str:
    return ref.rsplit(":", 1)[0]


def _recency(image: Image, repo: str) -> tuple[str, str]:
    """When the image was last deployed (its newest `deploy-<time>` tag), then when it was built.

    Build time alone misleads: a build served from the cache reuses an older
    image (and its old creation time), e.g. when a change is reverted.
    """
    if f"{repo}:latest" in image.tags:
        return ("~", image.created)  # what the next start uses: newest of all
    deployed = [t.rsplit(":", 1)[1][len("deploy-"):] for t in image.tags
                if _repo(t) == repo and t.rsplit(":", 1)[1].startswith("deploy-")]
    return (max(deployed, default=""), image.created)


def select(images: list[Image], in_use: set[str], apps: list[str], namespace: str,
           current_tier_tags: dict[str, str], keep: int) -> Plan:
    """Pure: which references to remove. Never an image a container uses, an
    app's `latest`, its newest `keep` images, a current tier, or a tier image
    some kept image is built on."""
    plan = Plan()
    kept_ids: set[str] = set()
    for app in apps:
        repo = f"{namespace}/{app}"
        mine = sorted((i for i in images if any(_repo(t) == repo for t in i.tags)),
                      key=lambda i: _recency(i, repo), reverse=True)
        for rank, image in enumerate(mine):
            if rank < keep or image.id in in_use or f"{repo}:latest" in image.tags:
                kept_ids.add(image.id)
            else:
                plan.remove += [t for t in image.tags if _repo(t) == repo]
    tier_repos = {f"{namespace}/{t}" for t in tiers.TIER_ORDER}
    tier_images = [i for i in images if any(_repo(t) in tier_repos for t in i.tags)]
    current = {f"{namespace}/{t}:{tag}" for t, tag in current_tier_tags.items()}
    current |= {f"{namespace}/{t}:latest" for t in tiers.TIER_ORDER}
    kept_tiers = {i.id for i in tier_images if current & set(i.tags) or i.id in in_use}
    # A tier stays when the layers of a kept image (app or tier) begin with its layers.
    changed = True
    while changed:
        changed = False
        holders = [i for i in images if i.id in kept_ids | kept_tiers]
        for tier in tier_images:
            if tier.id in kept_tiers:
                continue
            if any(h.id != tier.id and h.layers[: len(tier.layers)] == tier.layers for h in holders):
                kept_tiers.add(tier.id)
                changed = True
    for tier in tier_images:
        if tier.id not in kept_tiers:
            plan.remove += [t for t in tier.tags if _repo(t) in tier_repos]
    plan.kept = sorted(t for i in images if i.id in kept_ids | kept_tiers for t in i.tags)
    plan.remove = sorted(set(plan.remove))
    return plan


def collect(runner: Runner, namespace: str) -> tuple[list[Image], set[str], dict[str, int]]:
    """The namespace's images, the image IDs containers use, and unique bytes per image ID."""
    refs = runner.run(docker_cmd.namespace_images(namespace), "list images", mutates=False).stdout.split()
    images: list[Image] = []
    if refs:
        inspect = docker_cmd.images_json(refs)
        data = disk.docker_json(runner.run(inspect, "inspect images", mutates=False).stdout, inspect)
        by_id: dict[str, dict] = {d["Id"]: d for d in data}
        for iid, d in by_id.items():
            tags = tuple(t for t in d.get("RepoTags") or [] if t.startswith(namespace + "/"))
            images.append(Image(iid, tags, d.get("Created", ""), tuple(d["RootFS"].get("Layers") or [])))
    ids = runner.run(docker_cmd.all_containers(), "list containers",
                     mutates=False).stdout.split()
    in_use: set[str] = set()
    if ids:
        # A container removed since the listing (a `docker run --rm`, another project's test)
        # makes inspect exit 1 after printing the others: it uses no image any more.
        in_use = set(runner.run(docker_cmd.inspect("{{.Image}}", *ids), "inspect containers",
                                check=False, mutates=False).stdout.split())
    df = runner.run(disk.df_argv(), "read disk usage", mutates=False).stdout
    return images, in_use, disk.unique_sizes(df)


def prune(runner: Runner, project: Project, settings: Settings, reg: Registry, keep: int, cache_limit_mb: int,
          tags: dict[str, str] | None = None) -> Plan:
    images, in_use, unique = collect(runner, settings.image_namespace)
    current = tags or {t: tiers.content_tag(project, settings, t) for t in tiers.TIER_ORDER}
    plan = select(images, in_use, reg.names(), settings.image_namespace,
                  {"base": current.get("BASE_TAG", current.get("base", "")),
                   "ml": current.get("ML_TAG", current.get("ml", ""))}, keep)
    gone_ids = {i.id for i in images if i.tags and set(i.tags) <= set(plan.remove)}
    plan.freed = sum(unique.get(i, 0) for i in gone_ids)
    for ref in plan.remove:
        runner.say(("[dry-run] would remove " if runner.dry_run else "removing ") + ref)
    if plan.remove:
        runner.run(docker_cmd.image_rm(plan.remove), "remove old images")
    runner.run(docker_cmd.image_prune(), "remove dangling images")
    runner.run(docker_cmd.builder_prune(cache_limit_mb), "trim the build cache")
    verb = "would free" if runner.dry_run else "freed"
    runner.say(f"==> {len(plan.remove)} image reference(s) {'to remove' if runner.dry_run else 'removed'}, "
               f"{verb} about {disk.human(plan.freed)}; kept {len(plan.kept)}; "
               f"build cache trimmed to {cache_limit_mb} MB")
    return plan
