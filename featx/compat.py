"""The former positional order of functions whose later arguments are now keyword-only (one release).

Why: ``fit_head``, ``finetune``, ``labelled_codes``, ``advise`` and ``serve`` took up to 24 arguments in one
order; they now take their options as one value (or as keywords). Callers of the former import paths
(``featx.fit``, ``featx.finetune``, ``featx.baselines``) may still pass them by position: :func:`positional`
names them, with a FutureWarning. Nothing in featx imports this module but those paths.
"""

from __future__ import annotations

import functools
import warnings


def positional(func, order: tuple):
    """``func`` also accepting its former positional arguments: ``order`` names every former parameter in
    sequence; those that ``func`` still takes by position are passed on by position, the rest by name.
    A name given both by position and by keyword is a TypeError, as Python's.
    """
    import inspect

    first = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                for p in inspect.signature(func).parameters.values())

    @functools.wraps(func)
    def call(*args, **keywords):
        kept, extra = args[:first], args[first:]
        if extra:
            names = order[first:first + len(extra)]
            if len(extra) > len(names):
                raise TypeError(f"{func.__name__}() takes at most {first + len(names)} positional arguments")
            twice = [n for n in names if n in keywords]
            if twice:
                raise TypeError(f"{func.__name__}() got multiple values for {', '.join(twice)}")
            warnings.warn(f"{func.__name__}(): pass {', '.join(names)} by keyword; the positional form goes "
                          "in the next release", FutureWarning, stacklevel=2)
            keywords.update(zip(names, extra))
        return func(*kept, **keywords)

    return call
