"""``selfmodel members add|remove|list``: a group's members through AdminService, each printing
the node's reply in the proto JSON mapping (as federation.agent_commands' commands do)."""

from __future__ import annotations

import argparse

from federation import calls
from federation.agent_commands import _run, client_args
from federation.client import parse_subject


def _add(args: argparse.Namespace) -> int:
    group, member = (parse_subject(s, args.tenant) for s in (args.group, args.member))
    return _run(args, calls.add_member, group, member)


def _remove(args: argparse.Namespace) -> int:
    group, member = (parse_subject(s, args.tenant) for s in (args.group, args.member))
    return _run(args, calls.remove_member, group, member)


def _list(args: argparse.Namespace) -> int:
    group = parse_subject(args.group, args.tenant)
    return _run(args, calls.members, group, page_size=args.page_size, page_token=args.page_token)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    members = sub.add_parser(
        "members", help="a team's users or an organization's teams: add, remove, list"
    )
    actions = members.add_subparsers(dest="action", required=True)
    for name, run, says in (
        ("add", _add, "add a user to a team or a team to an organization"),
        ("remove", _remove, "remove a member (an add made concurrently elsewhere survives)"),
    ):
        p = actions.add_parser(name, help=f"{says} (operators, or tokens with --members)")
        p.add_argument("group", help="team:ID or org:ID (or tenant/kind/id)")
        p.add_argument("member", help="user:ID for a team, team:ID for an organization")
        client_args(p)
        p.set_defaults(run=run)
    listing = actions.add_parser("list", help="a group's direct members, by id, a page at a time")
    listing.add_argument("group", help="team:ID or org:ID (or tenant/kind/id)")
    listing.add_argument("--page-size", type=int, default=0, help="members per page (0: 100)")
    listing.add_argument("--page-token", default="", help="the nextPageToken of the last page")
    client_args(listing)
    listing.set_defaults(run=_list)


__all__ = ["add_commands"]
