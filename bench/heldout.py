"""The held-out set of the token benchmark: material the retriever was never tuned on.

Written in one sitting before any retrieval was measured on it, and never changed after a
measurement (tuning happens on `bench/questions.py` only; this set is reported, not tuned to).

Corpus, read at run time from this machine (never copied into the repository), each file with
the sha256 of the content the questions were written against, so the set cannot drift:

- code: 25 modules of this interpreter's standard library that the first set does not use
  (configparser, datetime, subprocess, threading, weakref, ElementTree, ...);
- prose in four formats: Node.js's API manual as installed by Debian's `nodejs` package
  (Markdown, `/usr/share/doc/nodejs/api`), IDLE's user manual (HTML, shipped in the standard
  library's `idlelib`), Debian's Python policy (HTML, `/usr/share/doc/python3`), the email
  package's architecture notes (reStructuredText, standard library), and dpkg's specifications
  of triggers and rootless builds (plain text, `/usr/share/doc/dpkg/spec`).

Questions are phrased as a user would ask them, in their own words: no identifier of the answer
(`fromisoformat`, `extname`) and, where possible, none of the answer's rare words. Some need two
facts from two places; such a question counts as found only when both are in the context. An
answer is where it lives: for code, the `def`/`class` line of a definition (`name` or
`Class.name`, as in `bench/questions.py`); for prose, a short phrase of the text that states it
(`span`, matched with runs of white space as one space, in the text as ingested: an HTML page
without its markup). A passage holds the answer when it is of that file and its line range
holds that line.
"""

from __future__ import annotations

import dataclasses
import sysconfig
from pathlib import Path
from typing import Literal

STDLIB = "{stdlib}"
NODE = "/usr/share/doc/nodejs/api"
DPKG = "/usr/share/doc/dpkg/spec"
PYTHON3 = "/usr/share/doc/python3"

# Every file of the corpus and the sha256 of its content when the questions were written.
CODE_FILES: dict[str, str] = {
    f"{STDLIB}/configparser.py": "4a70cecccb55031a413b79e6ced2e63ca031f770cd25a4882980ecdeab67f6ff",
    f"{STDLIB}/datetime.py": "cc9bcb0f1c2f44e1a6cd51882979e113e973c2e65ed84b9aaedabb48d47aa356",
    f"{STDLIB}/smtplib.py": "b154e27998d0ef0b32fcc665299cdb30883ffe039ede3c4faac3a9db6618d35d",
    f"{STDLIB}/http/cookies.py": "a4712e985f8d892e290e8317d0d4d692313a39d5b0bd22fc640b885a79043ff7",
    f"{STDLIB}/hmac.py": "a4790b3cfd1b58875879621dbe8f4c0a30fb50a8582045b0d5c1a712afc8c36b",
    f"{STDLIB}/filecmp.py": "178f19895fdd43d5d3865b2bfe9ae7b665611a30d29cfc23d44f01417774851c",
    f"{STDLIB}/fileinput.py": "b0cd2a3f01c96f594b6038e52bd83d489bfa081cc757103c70aab4e5b2c4fe1f",
    f"{STDLIB}/mimetypes.py": "240e2278866203e691307bc5c4c22de4236ab14d4c4d4f45fad82dd4614cca3d",
    f"{STDLIB}/platform.py": "4a3cc68ba7354f8d5cc28c55315a7d77b77dcdbbaa3a092572a636b5fb5b6938",
    f"{STDLIB}/selectors.py": "1eeb102373e18c96311203f30c516e785bd8642275aa0bd66e43a284c9692385",
    f"{STDLIB}/timeit.py": "e6414bbc158ad2007fc17f892ec49cca67cbb6d4f90920f4267ddeb19f032a03",
    f"{STDLIB}/traceback.py": "22c8a9a4b34668acf8100613e0bd8cdc997e617e0ad69493b7e00a9b2e1e3f17",
    f"{STDLIB}/weakref.py": "56f8d313fb74019e53eb9287400702fbce788b7fe30e097b0b6e06296f3f080c",
    f"{STDLIB}/graphlib.py": "7bd338c5a475d1101064603d3baa5507446d3c5e73f741f6d6e77c6204c1eb65",
    f"{STDLIB}/gettext.py": "a5c249a522b6b8e3aa6f1b12a8bcc09508b99ad612b58d2fc973db27ea3b7cc3",
    f"{STDLIB}/getpass.py": "e74fd445337ff503223dd8aa4bdd7d04917067d00c796a10bedb7a1381a4960a",
    f"{STDLIB}/zipapp.py": "776078e89fd7dadbce41678f8bacd3b493135e6d610911c867489415420de383",
    f"{STDLIB}/threading.py": "2c4c1db159e1178896eca324082ae98d627c8d7017d0c7135b832f4fb3117210",
    f"{STDLIB}/subprocess.py": "2ff641d58f8696496e8718538cd96cd7afcd503ae271fb23da22422b3aee9fc7",
    f"{STDLIB}/optparse.py": "07d224301cba312fa0697bff9cd5a4bb4f778a90629632091b3f4ae874d89af5",
    f"{STDLIB}/tokenize.py": "79aa94ebe1761811ea9b2da2ada409a8cb9abd7c6eac241d0c181a36684bb609",
    f"{STDLIB}/socketserver.py": "a1402df8627949d0b72591e742795fcd48f911172610d4e3c2f16bd7dcae8128",
    f"{STDLIB}/xml/etree/ElementTree.py": (
        "ff904b02de3a86888001f47f1518204d04d4e790d4ed85352d8544347ae7e940"
    ),
    f"{STDLIB}/asyncio/locks.py": (
        "3c8d4862ec147ca51c6a18a160ff2c954ecf90ac2348a3ec0bc4907216a11eb9"
    ),
    f"{STDLIB}/concurrent/futures/_base.py": (
        "8c6d5f09f7c535d40fa1c30ebfcb35e0601c2abf32286a82cf151af7ddf72473"
    ),
}
PROSE_FILES: dict[str, str] = {
    f"{NODE}/path.md": "742b6c9e70b6b871d7a3476878a730b428c9ec50ce7fab0800240c0ec34e50e6",
    f"{NODE}/timers.md": "d103a136412491998ca846978f05cf9f2112047b48f5800045bd37a0ffd38a51",
    f"{NODE}/readline.md": "8bbdfc894091704801a2254cb628762c28e016727a109ca7d6152d2d6c8a9f47",
    f"{NODE}/os.md": "e9dd7993548820b3974f952aad73a7bd7024cdb01bce880acad4d67c52008b2f",
    f"{NODE}/dns.md": "4f6097f3682e01c6cc78dd6e303cbcc29d24ab04c902df7b8185b7d2e1a60468",
    f"{NODE}/zlib.md": "a9065b7722dedc3f848fb654bb430a01e879991a6f771c6bac3f77c7126b1e6e",
    f"{STDLIB}/idlelib/help.html": (
        "0561d384ebee70e8bd3d7beeca4902a57b723f500a4a3f45fc7cbf506b04ac66"
    ),
    f"{PYTHON3}/python-policy.html": (
        "5272c69f91d3421dfa656d3dc52de721a02eee04749395ed03cc974cbc2ca201"
    ),
    f"{STDLIB}/email/architecture.rst": (
        "f2b2ba7497fd02d13abcfc2a98099283a94b09e8b4f2c1c822ecacde3bec3eae"
    ),
    f"{DPKG}/triggers.txt": "ef31fe26ba143c85070cf52929d3d237d471afb5fac31c93dd886a2543a42d7b",
    f"{DPKG}/rootless-builds.txt": (
        "7da38d891f88756c9cdf891cacdf7fe91cb629c91f32181f23b8fd62da5636f7"
    ),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """Where one fact of an answer is: a file of the corpus and a definition or a phrase."""

    path: str  # a key of CODE_FILES or PROSE_FILES
    name: str = ""  # code: a top-level definition, or Class.member
    span: str = ""  # prose: a phrase of the text that states the fact


@dataclasses.dataclass(frozen=True, slots=True)
class Question:
    text: str
    kind: Literal["code", "prose"]
    answers: tuple[Answer, ...]


def resolve(path: str) -> Path:
    """A corpus path on this machine."""
    return Path(path.replace(STDLIB, sysconfig.get_paths()["stdlib"]))


def _code(text: str, *answers: tuple[str, str]) -> Question:
    return Question(text, "code", tuple(Answer(f"{STDLIB}/{p}", name=n) for p, n in answers))


def _prose(text: str, *answers: tuple[str, str]) -> Question:
    return Question(text, "prose", tuple(Answer(p, span=s) for p, s in answers))


QUESTIONS: tuple[Question, ...] = (
    # --- code -----------------------------------------------------------------------------
    _code(
        "How do I read a setting from an INI file as true or false, so that yes, on and 1 all "
        "count as true?",
        ("configparser.py", "RawConfigParser.getboolean"),
    ),
    _code(
        "In my settings file I want a value to refer to a key of another section, written like "
        "${section:key}. Which way of substituting values supports that?",
        ("configparser.py", "ExtendedInterpolation"),
    ),
    _code(
        "What error is raised when a settings file has the same option twice in one section?",
        ("configparser.py", "DuplicateOptionError"),
    ),
    _code(
        "For a given day, how do I find which week of the year it falls in by the ISO rules, "
        "and its weekday number?",
        ("datetime.py", "date.isocalendar"),
    ),
    _code(
        "I have a timestamp string like 2024-03-05T10:30:00+01:00. How do I turn it back into a "
        "date-and-time object?",
        ("datetime.py", "datetime.fromisoformat"),
    ),
    _code(
        "How do I convert a moment in UTC to the local time of another zone?",
        ("datetime.py", "datetime.astimezone"),
    ),
    _code(
        "What represents a fixed offset from UTC, such as +05:30, without a full zone database?",
        ("datetime.py", "timezone"),
    ),
    _code(
        "How do I switch an open mail-server connection to an encrypted channel before sending "
        "my username and password?",
        ("smtplib.py", "SMTP.starttls"),
    ),
    _code(
        "What's the simplest way to hand a complete email object to the outgoing mail server, "
        "letting it work out the sender and recipients from the headers?",
        ("smtplib.py", "SMTP.send_message"),
    ),
    _code(
        "When I parse the cookie header a browser sent, what holds a single cookie's value along "
        "with attributes like its domain, path and max-age?",
        ("http/cookies.py", "Morsel"),
    ),
    _code(
        "How do I produce the response header lines that tell a browser to store my cookies?",
        ("http/cookies.py", "BaseCookie.output"),
    ),
    _code(
        "What's the quickest one-shot way to sign a message with a secret key and get the raw "
        "signature bytes?",
        ("hmac.py", "digest"),
    ),
    _code(
        "How do I compare two folders and find out which files exist only on one side?",
        ("filecmp.py", "dircmp"),
    ),
    _code(
        "I need to know whether two files have identical contents, not just the same size and "
        "modification time.",
        ("filecmp.py", "cmp"),
    ),
    _code(
        "How can I loop over the lines of all the files named on the command line as if they "
        "were one stream, reading standard input when none are given?",
        ("fileinput.py", "input"),
    ),
    _code(
        "How do I work out the media type of an upload from its file name, like report.pdf?",
        ("mimetypes.py", "guess_type"),
    ),
    _code(
        "Given a media type such as image/png, what file ending should I save it with?",
        ("mimetypes.py", "guess_extension"),
    ),
    _code(
        "How can my program tell which Linux distribution and release it is running on?",
        ("platform.py", "freedesktop_os_release"),
    ),
    _code(
        "I want one readable line naming the operating system, its version and the machine "
        "architecture, to paste into bug reports.",
        ("platform.py", "platform"),
    ),
    _code(
        "How do I ask to be told when a socket has data waiting, attaching my own object to it "
        "so I know what to do when it fires?",
        ("selectors.py", "BaseSelector.register"),
    ),
    _code(
        "How do I measure how long a tiny snippet takes to run, repeating it many times for a "
        "stable figure?",
        ("timeit.py", "timeit"),
    ),
    _code(
        "Can the benchmark helper pick the number of repetitions by itself, so that one round "
        "takes at least a fifth of a second?",
        ("timeit.py", "Timer.autorange"),
    ),
    _code(
        "Inside an except block, how do I get the whole error report as a string instead of "
        "printing it?",
        ("traceback.py", "format_exc"),
    ),
    _code(
        "How can I print where the program currently is, the chain of calls that led here, "
        "without any error having happened?",
        ("traceback.py", "print_stack"),
    ),
    _code(
        "I want to keep an error's details to render later, without holding on to the frames "
        "and their local variables.",
        ("traceback.py", "TracebackException"),
    ),
    _code(
        "I need a mapping that does not keep its keys alive: entries should vanish when the key "
        "object is freed.",
        ("weakref.py", "WeakKeyDictionary"),
    ),
    _code(
        "How do I have a cleanup function called when an object is freed, reliably even if the "
        "interpreter is exiting?",
        ("weakref.py", "finalize"),
    ),
    _code(
        "A weak reference to obj.method dies at once. How do I keep a weak reference to a "
        "bound method?",
        ("weakref.py", "WeakMethod"),
    ),
    _code(
        "I have jobs that depend on each other. How do I get an order in which every job comes "
        "after the jobs it needs?",
        ("graphlib.py", "TopologicalSorter"),
    ),
    _code(
        "What error tells me that my dependency graph has a loop in it?",
        ("graphlib.py", "CycleError"),
    ),
    _code(
        "How do I translate a message whose wording depends on a count, like '1 file' against "
        "'3 files'?",
        ("gettext.py", "ngettext"),
    ),
    _code(
        "How do I load my application's translation catalog from a locale folder and make the "
        "underscore function available everywhere?",
        ("gettext.py", "install"),
    ),
    _code(
        "How do I ask for a password in a terminal without the typed characters showing up?",
        ("getpass.py", "unix_getpass"),
    ),
    _code(
        "How can a script find the login name of the user running it?",
        ("getpass.py", "getuser"),
    ),
    _code(
        "How do I bundle a folder of Python code into a single runnable archive file with an "
        "interpreter line at the top?",
        ("zipapp.py", "create_archive"),
    ),
    _code(
        "How do I make several threads wait until all of them have reached the same point "
        "before any continues?",
        ("threading.py", "Barrier"),
    ),
    _code(
        "How can I run a function in the background after a 30 second delay, with the option to "
        "call it off before then?",
        ("threading.py", "Timer"),
    ),
    _code(
        "What simple flag can one thread raise and other threads block on until it is raised?",
        ("threading.py", "Event"),
    ),
    _code(
        "How do I run a command and capture what it prints, getting an error if it exits with a "
        "failure?",
        ("subprocess.py", "check_output"),
    ),
    _code(
        "I just want the exit status and the combined output of a shell command in one call, "
        "without exceptions.",
        ("subprocess.py", "getstatusoutput"),
    ),
    _code(
        "How do I feed data to a child process's input and read everything it writes back, "
        "without it hanging when a pipe buffer fills up?",
        ("subprocess.py", "Popen.communicate"),
    ),
    _code(
        "With the older command-line option parser, how do I put related options under their "
        "own heading in the help text?",
        ("optparse.py", "OptionGroup"),
    ),
    _code(
        "How can I find out which text encoding a Python source file declares in its first lines?",
        ("tokenize.py", "detect_encoding"),
    ),
    _code(
        "How do I make my simple TCP server deal with each client in a thread of its own?",
        ("socketserver.py", "ThreadingMixIn"),
    ),
    _code(
        "How do I pretty-print an XML tree with indentation before saving it?",
        ("xml/etree/ElementTree.py", "indent"),
    ),
    _code(
        "How can I process a huge XML file piece by piece, handling each element as soon as it "
        "is complete, instead of loading the whole document?",
        ("xml/etree/ElementTree.py", "iterparse"),
    ),
    _code(
        "In async code, how can one task wake up other tasks that are waiting for some state to "
        "change?",
        ("asyncio/locks.py", "Condition"),
    ),
    _code(
        "I submitted many jobs to a worker pool. How do I handle their results in the order "
        "they finish rather than the order I submitted them?",
        ("concurrent/futures/_base.py", "as_completed"),
    ),
    _code(
        "How do I attach a function that is called as soon as a pending result is ready?",
        ("concurrent/futures/_base.py", "Future.add_done_callback"),
    ),
    _code(
        "Both for threads and for async tasks: what caps how many of them may use a resource "
        "at once, say 5?",
        ("threading.py", "Semaphore"),
        ("asyncio/locks.py", "Semaphore"),
    ),
    _code(
        "I read timestamps as text like 2024-03-05T10:30:00+01:00 and must store them in UTC. "
        "Which two calls do that?",
        ("datetime.py", "datetime.fromisoformat"),
        ("datetime.py", "datetime.astimezone"),
    ),
    _code(
        "I run an external program with a time limit. What do I call, and which error tells me "
        "it ran over?",
        ("subprocess.py", "run"),
        ("subprocess.py", "TimeoutExpired"),
    ),
    # --- prose ----------------------------------------------------------------------------
    _prose(
        "In Node, how do I get the file ending of a path, like .html?",
        (f"{NODE}/path.md", "returns the extension of the"),
    ),
    _prose(
        "How do I compute how to get from one folder to another as a relative path in Node?",
        (f"{NODE}/path.md", "method returns the relative path from"),
    ),
    _prose(
        "Does Node's path handling behave differently on Windows and on Linux, and how do I get "
        "consistent results?",
        (f"{NODE}/path.md", "The default operation of the `node:path` module varies"),
    ),
    _prose(
        "In Node, how do I restart a timer's countdown without creating a new timer object?",
        (f"{NODE}/timers.md", "Sets the timer's start time to the current time"),
    ),
    _prose(
        "How do I stop a pending timer from keeping the Node process alive when nothing else is "
        "left to do?",
        (f"{NODE}/timers.md", "object will not require the Node.js event loop"),
    ),
    _prose(
        "In Node, how do I run a callback right after the current I/O events are handled, "
        "rather than after a delay?",
        (f"{NODE}/timers.md", 'Schedules the "immediate" execution of the'),
    ),
    _prose(
        "Can I await a delay in Node with a promise instead of passing a callback?",
        (f"{NODE}/timers.md", "provides an alternative set of timer functions"),
    ),
    _prose(
        "How do I read a text file one line at a time in Node?",
        (f"{NODE}/readline.md", "is to consume an input file one line at a"),
    ),
    _prose(
        "In a Node command-line prompt, how do I ask the user something and get their typed "
        "answer back?",
        (f"{NODE}/readline.md", "method displays the `query` by writing it to the `output`"),
    ),
    _prose(
        "What happens in a Node line-reading interface when the user presses Ctrl+C?",
        (f"{NODE}/readline.md", "The `'SIGINT'` event is emitted whenever the `input` stream"),
    ),
    _prose(
        "How do I offer tab-completion of what the user is typing at a Node prompt?",
        (f"{NODE}/readline.md", "function takes the current line entered by the user"),
    ),
    _prose(
        "How many threads should my Node program use? Is there a way to ask the system for a "
        "sensible number?",
        (f"{NODE}/os.md", "Returns an estimate of the default amount of parallelism"),
    ),
    _prose(
        "How can a Node program check how much memory is still free on the machine?",
        (f"{NODE}/os.md", "Returns the amount of free system memory in bytes"),
    ),
    _prose(
        "Where should a Node program put temporary files on this operating system?",
        (f"{NODE}/os.md", "default directory for temporary files"),
    ),
    _prose(
        "How do I find the current user's home folder from Node?",
        (f"{NODE}/os.md", "Returns the string path of the current user's home directory"),
    ),
    _prose(
        "How do I look up the mail servers that accept email for a domain from Node?",
        (f"{NODE}/dns.md", "Uses the DNS protocol to resolve mail exchange records"),
    ),
    _prose(
        "Why might a host name resolve differently in Node depending on which lookup function I "
        "use, and which one follows the hosts file?",
        (f"{NODE}/dns.md", "Under the hood, [`dns.lookup()`][] uses the same operating system"),
    ),
    _prose(
        "How do I point Node's name resolution at my own DNS servers?",
        (f"{NODE}/dns.md", "Sets the IP address and port of servers to be used when performing"),
    ),
    _prose(
        "How do I find the host name that belongs to an IP address in Node?",
        (f"{NODE}/dns.md", "Performs a reverse DNS query"),
    ),
    _prose(
        "Node's compression functions seem to block or slow down under load. Why, and what "
        "runs them?",
        (f"{NODE}/zlib.md", "except those that are explicitly synchronous, use the Node.js"),
    ),
    _prose(
        "How do I make a Node compression stream emit everything it has buffered so far?",
        (f"{NODE}/zlib.md", "on a compression stream will make `zlib` return as much"),
    ),
    _prose(
        "In Node, how do I decompress data when I don't know if it is gzip or deflate?",
        (f"{NODE}/zlib.md", "Decompress either a Gzip- or Deflate-compressed stream"),
    ),
    _prose(
        "How do I compute a CRC checksum of a buffer with Node's built-in modules?",
        (f"{NODE}/zlib.md", "Computes a 32-bit"),
    ),
    _prose(
        "In IDLE, how do I run my script with command-line arguments?",
        (f"{STDLIB}/idlelib/help.html", "Same as Run Module, but run the module with customized"),
    ),
    _prose(
        "IDLE's shell is flooded with a huge output. Can I fold it away into a single line?",
        (f"{STDLIB}/idlelib/help.html", "squeeze all the output between the code above"),
    ),
    _prose(
        "How do I get IDLE to show the signature of a function while I type its arguments?",
        (f"{STDLIB}/idlelib/help.html", "is shown automatically when one types ( after the name"),
    ),
    _prose(
        "IDLE won't start and complains about a connection. What is going on?",
        (f"{STDLIB}/idlelib/help.html", "IDLE uses a socket to communicate between the IDLE GUI"),
    ),
    _prose(
        "How do I remove the spaces left at the ends of lines in IDLE's editor?",
        (f"{STDLIB}/idlelib/help.html", "Remove trailing space and other whitespace characters"),
    ),
    _prose(
        "Can I make IDLE run a file of my own each time the shell starts?",
        (f"{STDLIB}/idlelib/help.html", "Upon startup with the -s option"),
    ),
    _prose(
        "When I scroll down in a long function in IDLE, can it keep showing which class and def "
        "I am inside?",
        (f"{STDLIB}/idlelib/help.html", "code context can be toggled in order to show or hide"),
    ),
    _prose(
        "On Debian, which interpreter line should a packaged Python script start with?",
        (f"{PYTHON3}/python-policy.html", "Executables written for interpretation by Python must"),
    ),
    _prose(
        "Where should a Debian package put Python modules that only its own program uses?",
        (f"{PYTHON3}/python-policy.html", "These modules should be installed in"),
    ),
    _prose(
        "Does Debian still ship a plain 'python' command, and what does it point to?",
        (f"{PYTHON3}/python-policy.html", "the /usr/bin/python command is provided in the"),
    ),
    _prose(
        "Who is responsible for compiling the .pyc files of a Debian Python package?",
        (f"{PYTHON3}/python-policy.html", "the corresponding byte-compiled modules"),
    ),
    _prose(
        "In the email library, what decides how headers are folded and parsed as a message "
        "goes through its life?",
        (f"{STDLIB}/email/architecture.rst", "One of the major controls exerted by the Policy"),
    ),
    _prose(
        "What are the main parts the email library is made of?",
        (f"{STDLIB}/email/architecture.rst", "The email package consists of three major"),
    ),
    _prose(
        "How does the email library cope with messages containing raw 8-bit bytes that break "
        "the standards?",
        (f"{STDLIB}/email/architecture.rst", "In an ideal world all message data would conform"),
    ),
    _prose(
        "What is a dpkg trigger for?",
        (f"{DPKG}/triggers.txt", "A dpkg trigger is a facility that allows events caused by one"),
    ),
    _prose(
        "How does a package get notified when other packages install files into a directory it "
        "watches?",
        (f"{DPKG}/triggers.txt", "File triggers have names of the form"),
    ),
    _prose(
        "What happens if two packages keep triggering each other forever during an install?",
        (f"{DPKG}/triggers.txt", "In addition to dependency cycles, triggers raise"),
    ),
    _prose(
        "A package is half-configured because it waits on another package's trigger "
        "processing. What are those two new package states called?",
        (f"{DPKG}/triggers.txt", "There are two new dpkg status values"),
    ),
    _prose(
        "How can a Debian source package declare that it builds without needing root or fakeroot?",
        (f"{DPKG}/rootless-builds.txt", 'If "no", then "debian/rules binary" will not require'),
    ),
    _prose(
        "In Node, how do I split a path into its folder, base name and extension, and then put "
        "such pieces back together into a path?",
        (f"{NODE}/path.md", "method returns an object whose properties represent"),
        (f"{NODE}/path.md", "method returns a path string from an object"),
    ),
    _prose(
        "How do I set a breakpoint in IDLE, and how do I then get my code to stop at it?",
        (f"{STDLIB}/idlelib/help.html", "Set a breakpoint on the current line"),
        (f"{STDLIB}/idlelib/help.html", "When activated, code entered in the Shell or run from"),
    ),
)
