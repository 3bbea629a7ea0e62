"""Tables under results/: written whole, under a lock, merged with what is on disk when they are written, and never
replaced by a table made with other settings (compare.py's and bench.py's rule).

    with tables.locked('bench-tf_efficientnet_lite0-128'):   # two processes never lose each other's rows
        previous = tables.read(name)                         # None, or the .json record
        tables.check_settings(name, previous, settings)      # a ResultsError naming --tag if they differ
        tables.write(name, record, markdown)                 # .json and .md, each a temporary file renamed
"""
import fcntl
import json
import os
import re
from contextlib import contextmanager

DIR = 'results'


class ResultsError(Exception):
    """A results file this program must not write (another program's, or other settings'): the message says why."""


def check_tag(tag):
    """A --tag becomes part of a file name: letters, digits, '.', '_' and '-' only."""
    if tag is not None and not re.fullmatch(r'[A-Za-z0-9._-]+', tag):
        raise ResultsError(f'--tag {tag!r}: use letters, digits, ".", "_" and "-" only (it names a file in {DIR}/)')


def path(name, ext):
    return os.path.join(DIR, f'{name}.{ext}')


@contextmanager
def locked(name):
    """Holds results/.<name>.lock (the kernel releases it if the process dies)."""
    lock = os.path.join(DIR, os.path.dirname(name), f'.{os.path.basename(name)}.lock')  # name: 'table' or 'dir/table'
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    with open(lock, 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def read(name):
    """The .json record of a table, or None; a damaged or foreign file is a ResultsError, never overwritten."""
    if not os.path.exists(path(name, 'json')):
        if os.path.exists(path(name, 'md')):
            raise ResultsError(f'{path(name, "md")} has no .json record of its settings (an older table, or another '
                               f'program\'s); move it away, or give these results their own --tag')
        return None
    try:
        with open(path(name, 'json')) as f:
            record = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ResultsError(f'{path(name, "json")} is damaged ({e}); move it away to write this table') from None
    if not isinstance(record, dict) or 'settings' not in record:
        raise ResultsError(f'{path(name, "json")} is not a table of this codebase (no settings); move it away, or '
                           f'give these results their own --tag')
    return record


def check_settings(name, previous, settings):
    if previous is not None and previous['settings'] != settings:
        differ = sorted(k for k in set(settings) | set(previous['settings'])
                        if settings.get(k) != previous['settings'].get(k))
        raise ResultsError(f'{path(name, "json")} was made with other settings ({", ".join(differ)} differ); give '
                           f'these results their own --tag')


def write(name, record, markdown):
    os.makedirs(os.path.dirname(path(name, 'md')), exist_ok=True)
    for ext, text in (('json', json.dumps(record, indent=1, allow_nan=False) + '\n'), ('md', markdown)):
        tmp = path(name, ext) + '.tmp'
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, path(name, ext))
