"""Questions for the token benchmark (`bench/tokens.py`), each with where its answer lives.

Written as a developer would ask them at a help desk, in their own words (not the docstrings'),
before any retrieval was measured. Each names the file (relative to the standard library's
directory, `sysconfig.get_paths()["stdlib"]`) and the definition (`name` or `Class.name`)
whose `def`/`class` line, or the docstring under it, answers the question. The benchmark finds
that line with `ast`; a question is answered by a passage of that file whose line range holds
it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Question:
    text: str
    path: str  # relative to the stdlib directory
    name: str  # a top-level definition, or Class.member


def _q(text: str, path: str, name: str) -> Question:
    return Question(text, path, name)


QUESTIONS: tuple[Question, ...] = (
    # shlex
    _q(
        "I have a whole command line in one string, with quoted arguments. What breaks it "
        "into a list of arguments the way a POSIX shell would?",
        "shlex.py",
        "split",
    ),
    _q(
        "How can I safely escape a filename with spaces before pasting it into a shell command?",
        "shlex.py",
        "quote",
    ),
    _q(
        "What's the opposite of splitting: turning a list of arguments back into one shell "
        "command string?",
        "shlex.py",
        "join",
    ),
    # json
    _q(
        "How do I turn a Python dict into a JSON string with the keys sorted and pretty "
        "indentation?",
        "json/__init__.py",
        "dumps",
    ),
    _q(
        "When parsing JSON from a string, can I get Decimal objects for the numbers with a "
        "fraction instead of floats?",
        "json/__init__.py",
        "loads",
    ),
    _q(
        "Which exception do I get when a JSON document is malformed, and does it tell me the "
        "line and column?",
        "json/decoder.py",
        "JSONDecodeError",
    ),
    _q(
        "My objects include sets and dates; how do I teach the JSON encoder to serialize types "
        "it doesn't know about?",
        "json/encoder.py",
        "JSONEncoder.default",
    ),
    _q(
        "I have a string that starts with a JSON document followed by other junk. How do I "
        "decode just the document and learn where it ended?",
        "json/decoder.py",
        "JSONDecoder.raw_decode",
    ),
    # csv
    _q(
        "How do I read a CSV file so that each row comes back as a dictionary keyed by the "
        "column names in the header?",
        "csv.py",
        "DictReader",
    ),
    _q(
        "I get CSV files from customers with unknown delimiters. Is there something that "
        "guesses the dialect from a sample?",
        "csv.py",
        "Sniffer",
    ),
    _q(
        "Can Python tell me whether the first line of a CSV sample looks like a header row?",
        "csv.py",
        "Sniffer.has_header",
    ),
    _q(
        "What do I use to write a list of dictionaries out as CSV rows with a header line?",
        "csv.py",
        "DictWriter",
    ),
    # textwrap
    _q(
        "My triple-quoted string is indented like the code around it. How do I remove the "
        "common leading whitespace from every line?",
        "textwrap.py",
        "dedent",
    ),
    _q(
        "How do I put a prefix such as '> ' in front of every line of a block of text?",
        "textwrap.py",
        "indent",
    ),
    _q(
        "How can I cut a long title down to fit in 40 characters, ending it with '...' when "
        "it was truncated?",
        "textwrap.py",
        "shorten",
    ),
    _q(
        "How do I break a long paragraph into lines of at most 70 characters and get them back "
        "as a list?",
        "textwrap.py",
        "wrap",
    ),
    # shutil
    _q(
        "How do I copy an entire folder with all its subfolders to a new location?",
        "shutil.py",
        "copytree",
    ),
    _q(
        "How can I delete a directory that is not empty, along with everything inside it?",
        "shutil.py",
        "rmtree",
    ),
    _q(
        "Is there a Python equivalent of the `which` command to find where an executable is "
        "on the PATH?",
        "shutil.py",
        "which",
    ),
    _q(
        "How can I check how much free space is left on the disk that holds a given path?",
        "shutil.py",
        "disk_usage",
    ),
    _q(
        "How do I create a zip or a tar.gz archive of a folder with a single function call?",
        "shutil.py",
        "make_archive",
    ),
    _q(
        "How do I find out how many columns and rows the terminal window has?",
        "shutil.py",
        "get_terminal_size",
    ),
    _q(
        "What's the right way to move a file or a folder when the destination may be on "
        "another filesystem?",
        "shutil.py",
        "move",
    ),
    # pathlib
    _q(
        "With pathlib, how do I find every file matching a pattern in a folder and all of its "
        "subfolders?",
        "pathlib.py",
        "Path.rglob",
    ),
    _q(
        "How do I express one path relative to another path using pathlib?",
        "pathlib.py",
        "PurePath.relative_to",
    ),
    _q(
        "How do I change the extension of a file name held in a path object, say from .txt to .md?",
        "pathlib.py",
        "PurePath.with_suffix",
    ),
    _q(
        "What is the shortest way to read the whole contents of a text file through a Path object?",
        "pathlib.py",
        "Path.read_text",
    ),
    _q(
        "How do I turn a path that begins with ~ into one under the user's home directory, "
        "with pathlib?",
        "pathlib.py",
        "Path.expanduser",
    ),
    # heapq
    _q(
        "How do I get the five biggest values from a long list without sorting all of it?",
        "heapq.py",
        "nlargest",
    ),
    _q(
        "I have several lists that are each already sorted. How do I combine them into one "
        "sorted sequence lazily?",
        "heapq.py",
        "merge",
    ),
    _q(
        "On a heap, is there a faster way to push a new item and then pop the smallest one "
        "than doing the two calls separately?",
        "heapq.py",
        "heappushpop",
    ),
    # bisect
    _q(
        "How do I insert a number into a list that is already sorted so that it stays sorted?",
        "bisect.py",
        "insort_right",
    ),
    _q(
        "In a sorted list, how do I find the index where a value would go, before any entries "
        "equal to it?",
        "bisect.py",
        "bisect_left",
    ),
    # functools
    _q(
        "How do I memoize an expensive function but keep only the most recently used results?",
        "functools.py",
        "lru_cache",
    ),
    _q(
        "How can I pre-fill some arguments of a function to get a new function that needs "
        "fewer arguments?",
        "functools.py",
        "partial",
    ),
    _q(
        "I want one function name with different implementations chosen by the type of the "
        "first argument. What does the standard library offer?",
        "functools.py",
        "singledispatch",
    ),
    _q(
        "My class defines __eq__ and __lt__. Is there a decorator that fills in <=, > and >= "
        "for me?",
        "functools.py",
        "total_ordering",
    ),
    _q(
        "After I wrap a function in my decorator its __name__ and docstring are gone. How do I "
        "keep them?",
        "functools.py",
        "wraps",
    ),
    _q(
        "How do I have an attribute computed on first access and then stored on the instance?",
        "functools.py",
        "cached_property",
    ),
    _q(
        "How do I collapse a list to a single value by applying a two-argument function from "
        "left to right?",
        "functools.py",
        "reduce",
    ),
    # statistics
    _q(
        "How do I get the middle value of a list of numbers, averaging the two middle ones "
        "when the count is even?",
        "statistics.py",
        "median",
    ),
    _q(
        "How do I compute the sample standard deviation of some measurements?",
        "statistics.py",
        "stdev",
    ),
    _q(
        "What function returns the value that occurs most often in a data set?",
        "statistics.py",
        "mode",
    ),
    _q(
        "How do I calculate Pearson's correlation coefficient between two series of numbers?",
        "statistics.py",
        "correlation",
    ),
    _q(
        "I need to work with a normal distribution: its mean, standard deviation, probability "
        "density and cumulative probability. Is there a class for that?",
        "statistics.py",
        "NormalDist",
    ),
    _q(
        "How do I divide my data into quartiles, or into percentiles?",
        "statistics.py",
        "quantiles",
    ),
    # fractions
    _q(
        "How do I find a fraction with a small denominator that is close to a float such as "
        "3.14159?",
        "fractions.py",
        "Fraction.limit_denominator",
    ),
    # difflib
    _q(
        "How do I produce a diff of two lists of lines in the same format as `diff -u`?",
        "difflib.py",
        "unified_diff",
    ),
    _q(
        "A user typed a command name wrong. How do I suggest the nearest matches from a list "
        "of valid commands?",
        "difflib.py",
        "get_close_matches",
    ),
    _q(
        "How can I get a number between 0 and 1 telling me how similar two strings are?",
        "difflib.py",
        "SequenceMatcher.ratio",
    ),
    _q(
        "I want an HTML table showing two versions of a file side by side with the changes "
        "highlighted. What generates that?",
        "difflib.py",
        "HtmlDiff",
    ),
    # string
    _q(
        "How do I fill in $name style placeholders in a string but leave the unknown ones "
        "alone instead of raising an error?",
        "string.py",
        "Template.safe_substitute",
    ),
    _q(
        "What's a quick way to capitalize the first letter of each word in a sentence?",
        "string.py",
        "capwords",
    ),
    # calendar
    _q(
        "How do I check if a given year is a leap year?",
        "calendar.py",
        "isleap",
    ),
    _q(
        "For a given month and year, how do I get the weekday of the first day and the number "
        "of days in the month?",
        "calendar.py",
        "monthrange",
    ),
    _q(
        "I have a time tuple in UTC. How do I convert it to seconds since the epoch without my "
        "local time zone getting involved?",
        "calendar.py",
        "timegm",
    ),
    # base64
    _q(
        "How do I base64-encode bytes so that the result can go into a URL without escaping?",
        "base64.py",
        "urlsafe_b64encode",
    ),
    _q(
        "How do I decode a string that was encoded in base32?",
        "base64.py",
        "b32decode",
    ),
    _q(
        "How do I encode binary data using Ascii85, as used in PDF and PostScript?",
        "base64.py",
        "a85encode",
    ),
    # zipfile
    _q(
        "How do I unpack every file in a zip archive into a target folder?",
        "zipfile.py",
        "ZipFile.extractall",
    ),
    _q(
        "Before opening an upload, how can I check whether it is really a zip file?",
        "zipfile.py",
        "is_zipfile",
    ),
    _q(
        "How do I add a file from disk to a zip archive, and choose the compression for it?",
        "zipfile.py",
        "ZipFile.write",
    ),
    # gzip
    _q(
        "How do I gzip-compress a bytes object in memory, without writing a file?",
        "gzip.py",
        "compress",
    ),
    _q(
        "How do I open a .gz file and read it as text lines?",
        "gzip.py",
        "open",
    ),
    # uuid
    _q(
        "How do I generate a random UUID?",
        "uuid.py",
        "uuid4",
    ),
    _q(
        "How do I get a stable UUID derived from a namespace and a name, using SHA-1?",
        "uuid.py",
        "uuid5",
    ),
    # secrets
    _q(
        "What should I use to generate an unguessable token to put in a password reset link?",
        "secrets.py",
        "token_urlsafe",
    ),
    _q(
        "How do I get a random hexadecimal string from a secure source for use as an API key?",
        "secrets.py",
        "token_hex",
    ),
    # argparse
    _q(
        "How do I give my command-line tool subcommands, the way git has commit and push?",
        "argparse.py",
        "ArgumentParser.add_subparsers",
    ),
    _q(
        "How do I declare two command-line options so that the user may give only one of them?",
        "argparse.py",
        "_ActionsContainer.add_mutually_exclusive_group",
    ),
    _q(
        "My script should parse the options it knows and pass the leftover arguments on to "
        "another program. How?",
        "argparse.py",
        "ArgumentParser.parse_known_args",
    ),
    _q(
        "How do I get the help text of my command-line options to show their default values "
        "automatically?",
        "argparse.py",
        "ArgumentDefaultsHelpFormatter",
    ),
    _q(
        "Can an argument parser open a file named on the command line for me, with '-' meaning "
        "standard input?",
        "argparse.py",
        "FileType",
    ),
    # logging
    _q(
        "What is the one call that sets up logging to a file with a level and a message format?",
        "logging/__init__.py",
        "basicConfig",
    ),
    _q(
        "How should each of my modules get its own named logger?",
        "logging/__init__.py",
        "getLogger",
    ),
    _q(
        "Inside an except block, how do I log an error message together with the traceback?",
        "logging/__init__.py",
        "Logger.exception",
    ),
    _q(
        "How do I control how the time of each log record is printed, for example ISO format "
        "or a custom date format?",
        "logging/__init__.py",
        "Formatter.formatTime",
    ),
    _q(
        "How can I drop some log records, for instance everything not coming from one "
        "subsystem's loggers?",
        "logging/__init__.py",
        "Filter",
    ),
    # contextlib
    _q(
        "How do I write a context manager as a generator function with a single yield instead "
        "of a class with __enter__ and __exit__?",
        "contextlib.py",
        "contextmanager",
    ),
    _q(
        "How do I ignore one specific exception inside a with block without writing "
        "try/except/pass?",
        "contextlib.py",
        "suppress",
    ),
    _q(
        "How do I capture everything a function prints to stdout into a string buffer?",
        "contextlib.py",
        "redirect_stdout",
    ),
    _q(
        "I need to open a number of files that is only known at run time and make sure they "
        "all get closed. What helps with that?",
        "contextlib.py",
        "ExitStack",
    ),
    _q(
        "My object has a close() method but isn't a context manager. How do I still use it in "
        "a with statement?",
        "contextlib.py",
        "closing",
    ),
    # dataclasses
    _q(
        "How do I give a dataclass attribute an empty list as its default without every "
        "instance sharing the same list?",
        "dataclasses.py",
        "field",
    ),
    _q(
        "How do I turn a dataclass instance, with nested dataclasses inside, into a plain dict?",
        "dataclasses.py",
        "asdict",
    ),
    _q(
        "How do I make a copy of a frozen dataclass instance with a couple of fields changed?",
        "dataclasses.py",
        "replace",
    ),
    _q(
        "Can I create a dataclass at run time from a list of field names and types?",
        "dataclasses.py",
        "make_dataclass",
    ),
    # enum
    _q(
        "How do I define enumeration members that can be combined with the | operator, like "
        "permission bits?",
        "enum.py",
        "Flag",
    ),
    _q(
        "I don't care about the values of my enum members. How do I have them assigned "
        "automatically?",
        "enum.py",
        "auto",
    ),
    _q(
        "How do I make sure that no two members of an enumeration accidentally have the same "
        "value?",
        "enum.py",
        "unique",
    ),
    # ipaddress
    _q(
        "How can I tell whether an IPv4 address belongs to one of the private ranges like "
        "10.0.0.0/8?",
        "ipaddress.py",
        "IPv4Address.is_private",
    ),
    _q(
        "How do I iterate over the usable host addresses of a subnet, skipping the network and "
        "broadcast addresses?",
        "ipaddress.py",
        "_BaseNetwork.hosts",
    ),
    _q(
        "I have a long list of adjacent and overlapping networks. How do I summarize them into "
        "the fewest networks that cover the same addresses?",
        "ipaddress.py",
        "collapse_addresses",
    ),
    _q(
        "How do I parse an IP address from a string when I don't know whether it is v4 or v6?",
        "ipaddress.py",
        "ip_address",
    ),
    # urllib.parse
    _q(
        "How do I take a URL apart into its scheme, host, path and query string?",
        "urllib/parse.py",
        "urlparse",
    ),
    _q(
        "How do I build the query string part of a URL from a dict of parameters?",
        "urllib/parse.py",
        "urlencode",
    ),
    _q(
        "How do I percent-encode a string with spaces and slashes for use in a URL?",
        "urllib/parse.py",
        "quote",
    ),
    _q(
        "How do I turn a query string like a=1&b=2&b=3 into a dictionary of lists?",
        "urllib/parse.py",
        "parse_qs",
    ),
    _q(
        "Given the URL of a page and a relative link found on it, how do I compute the "
        "absolute URL of the link?",
        "urllib/parse.py",
        "urljoin",
    ),
    # email.utils
    _q(
        "How do I produce a correctly formatted date for the Date header of an email?",
        "email/utils.py",
        "formatdate",
    ),
    _q(
        "How do I split a string like 'Jane Doe <jane@example.com>' into the name and the address?",
        "email/utils.py",
        "parseaddr",
    ),
    # html
    _q(
        "How do I make user-provided text safe to insert in an HTML page by escaping <, > and &?",
        "html/__init__.py",
        "escape",
    ),
    _q(
        "How do I turn HTML character references like &amp; and &#39; back into plain characters?",
        "html/__init__.py",
        "unescape",
    ),
    # glob, fnmatch
    _q(
        "How do I list every .txt file under a folder, including in nested folders, with a "
        "wildcard pattern?",
        "glob.py",
        "glob",
    ),
    _q(
        "My directory names contain square brackets and glob finds nothing. How do I make "
        "glob treat them literally?",
        "glob.py",
        "escape",
    ),
    _q(
        "How do I test whether a file name matches a shell-style wildcard like *.py?",
        "fnmatch.py",
        "fnmatch",
    ),
    _q(
        "Can I convert a shell-style wildcard into an equivalent regular expression?",
        "fnmatch.py",
        "translate",
    ),
    # tempfile
    _q(
        "How do I create a scratch directory that is removed automatically when I'm done with it?",
        "tempfile.py",
        "TemporaryDirectory",
    ),
    _q(
        "I need a temporary file that another program can open by its name. What should I use?",
        "tempfile.py",
        "NamedTemporaryFile",
    ),
    _q(
        "Which directory does Python use for temporary files by default, and how is it chosen?",
        "tempfile.py",
        "gettempdir",
    ),
    _q(
        "Is there a temporary file that stays in memory while small and only goes to disk once "
        "it grows past a size?",
        "tempfile.py",
        "SpooledTemporaryFile",
    ),
    # queue
    _q(
        "With worker threads consuming a queue, how do I block until every item put in it has "
        "been processed?",
        "queue.py",
        "Queue.join",
    ),
    _q(
        "What kind of queue always hands out the entry with the lowest priority number first?",
        "queue.py",
        "PriorityQueue",
    ),
    _q(
        "How do I take an item off a queue without waiting if it's empty?",
        "queue.py",
        "Queue.get_nowait",
    ),
    # sched
    _q(
        "Using the standard library event scheduler, how do I run a function after a delay of "
        "some seconds?",
        "sched.py",
        "scheduler.enter",
    ),
    # copy
    _q(
        "Changing a nested list in my copy also changes the original. How do I copy it fully, "
        "inner lists included?",
        "copy.py",
        "deepcopy",
    ),
    # pprint
    _q(
        "How do I print a big nested dictionary readably, wrapped to a given width?",
        "pprint.py",
        "pprint",
    ),
    _q(
        "How do I get the pretty-printed representation of an object as a string instead of "
        "printing it?",
        "pprint.py",
        "pformat",
    ),
    # reprlib
    _q(
        "My container's __repr__ recurses forever when it contains itself. Is there a helper "
        "to guard against that?",
        "reprlib.py",
        "recursive_repr",
    ),
    _q(
        "How can I produce a shortened repr of a huge list or string, with limits on how many "
        "items are shown?",
        "reprlib.py",
        "Repr",
    ),
    # random
    _q(
        "How do I pick 5 different elements from a list at random, without repeats?",
        "random.py",
        "Random.sample",
    ),
    _q(
        "How do I put the items of a list in random order, in place?",
        "random.py",
        "Random.shuffle",
    ),
    _q(
        "How do I draw random items with replacement where some items are more likely than others?",
        "random.py",
        "Random.choices",
    ),
    _q(
        "How do I get random numbers following a bell curve with a given mean and sigma?",
        "random.py",
        "Random.gauss",
    ),
    _q(
        "How do I make my random numbers come out the same on every run for a test?",
        "random.py",
        "Random.seed",
    ),
    # collections
    _q(
        "How do I count how many times each word appears in a list of words?",
        "collections/__init__.py",
        "Counter",
    ),
    _q(
        "How do I make a lightweight tuple type whose fields can be read by name?",
        "collections/__init__.py",
        "namedtuple",
    ),
    _q(
        "How can I look up keys in several dictionaries in order, as if they were one mapping, "
        "for layered configuration?",
        "collections/__init__.py",
        "ChainMap",
    ),
    _q(
        "In an ordered dictionary, how do I move an existing key to the end (or the front)?",
        "collections/__init__.py",
        "OrderedDict.move_to_end",
    ),
    _q(
        "After counting things, how do I get the three most frequent ones with their counts?",
        "collections/__init__.py",
        "Counter.most_common",
    ),
)
