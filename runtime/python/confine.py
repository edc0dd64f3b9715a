"""Confinement of a kernel: what function code may touch. kernel.py calls apply() once, after its
own set-up and before it says ready; server.py uses the egress helpers to validate its settings.

Two layers (docs/python-api.md, "Confinement"):

1. Landlock, when the Linux kernel has it: the hard layer. The process restricts itself, for good,
   to reading the Python installation, its packages and what C libraries need, to reading and
   writing its scratch directory, to executing nothing, to listening on no TCP port and (ABI 6+) to
   signalling no process and reaching no abstract UNIX socket outside itself. Being root and having
   capabilities do not get around it; the capabilities are dropped too.
2. An audit hook (sys.addaudithook), always on: the soft layer. It refuses, with a PermissionError
   that says why, what Landlock cannot express or what it misses when Landlock is absent: opening
   paths outside the allowed roots, writing outside the scratch directory, running programs,
   forking, signals, ctypes, listening sockets, and connections the egress policy denies. It cannot
   be removed from Python, but Python has no boundary inside a process: code that works against the
   interpreter's internals can get around it. Only the first layer is firm.

Standard library only; ctypes is used here, before the hook refuses it to everyone else.
"""

import _socket
import _thread
import os
import posix
import re
import socket
import stat
import struct
import sys

# ---------------------------------------------------------------------------------------------
# Egress policy: the same rules as runtime/egress.mjs, on the numeric address actually connected to.

POLICIES = ("public-only", "allow-all")

# What `public-only` denies (IANA special-purpose registries); the list of runtime/egress.mjs.
DENIED_RANGES = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001::/32", "2001:db8::/32", "fc00::/7",
    "fe80::/10", "fec0::/10", "ff00::/8",
)

_HOST_PATTERN = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$")


def parse_ip(text, _pton=socket.inet_pton, _from_bytes=int.from_bytes,
             _families=((4, socket.AF_INET), (6, socket.AF_INET6))):
    """(4 or 6, address as int) for a canonical IPv4 or IPv6 address, else None. Brackets and an
    IPv6 zone (`fe80::1%eth0`) are dropped; `0x7f000001`, `127.1` and `0127.0.0.1` are not addresses."""
    if type(text) is not str:
        return None
    if text[:1] == "[" and text[-1:] == "]":
        text = text[1:-1]
    text = text.partition("%")[0]
    for family, af in _families:
        try:
            return family, _from_bytes(_pton(af, text), "big")
        except (OSError, ValueError):
            pass
    return None


def parse_cidr(text):
    """(family, shift, base) for a CIDR (`10.0.0.0/8`) or a single address, else None."""
    address, _, bits = str(text).strip().partition("/")
    ip = parse_ip(address)
    if ip is None or "/" in bits:
        return None
    width = 32 if ip[0] == 4 else 128
    if not _:
        prefix = width
    elif bits.isdigit() and len(bits) <= 3 and int(bits) <= width:
        prefix = int(bits)
    else:
        return None
    shift = width - prefix
    return ip[0], shift, ip[1] >> shift


# IPv6 ranges whose addresses carry an IPv4 address, and where it sits: judged as that address.
_IPV4_EMBEDDINGS = tuple((parse_cidr(cidr), shift) for cidr, shift in (
    ("::ffff:0:0/96", 0),  # IPv4-mapped
    ("::/96", 0),  # IPv4-compatible (also :: and ::1)
    ("::ffff:0:0:0/96", 0),  # IPv4-translated
    ("64:ff9b::/96", 0),  # NAT64
    ("2002::/16", 80),  # 6to4
))


def _in_range(r, ip):
    return r[0] == ip[0] and ip[1] >> r[1] == r[2]


def effective_ip(ip, _embeddings=_IPV4_EMBEDDINGS, _in_range=_in_range):
    if ip[0] == 6:
        for r, shift in _embeddings:
            if _in_range(r, ip):
                return 4, (ip[1] >> shift) & 0xFFFFFFFF
    return ip


def parse_egress_list(entries):
    """A matcher `(ip, hostname) -> bool` for a list of addresses, CIDRs and host names
    (`api.internal`, `*.corp.example`). Raises ValueError naming the first bad entry."""
    ranges, hosts = [], []
    for entry in entries:
        r = parse_cidr(entry)
        host = str(entry).strip().lower()
        host = host[:-1] if host.endswith(".") else host
        if r is not None:
            ranges.append(r)
        elif _HOST_PATTERN.match(host) and host.strip("0123456789.") != "":
            hosts.append(host)
        else:
            raise ValueError(f"{entry!r} is not an IP address, a CIDR or a host name")
    ranges, hosts = tuple(ranges), tuple(hosts)

    def matches(ip, hostname=None, effective_ip=effective_ip, _in_range=_in_range):
        target = effective_ip(ip)
        for r in ranges:
            if _in_range(r, ip) or _in_range(r, target):
                return True
        if hostname is not None:
            for host in hosts:
                if (hostname.endswith(host[1:]) if host[:2] == "*." else hostname == host):
                    return True
        return False

    return matches


def split_list(raw):
    return [item.strip() for item in (raw or "").split(",") if item.strip()]


def make_egress_check(policy="public-only", allow=(), deny=(), service_port=None, is_local=None):
    """The policy as a function `(address, port, hostname=None) -> reason or None`; `address` is
    the numeric address connected to, `hostname` the name the code asked for, if it asked for one.
    `is_local(ip_text)` says whether an address is one of this machine's."""
    if policy not in POLICIES:
        raise ValueError(f"must be public-only or allow-all, got {policy!r}")
    is_allowed, is_denied = parse_egress_list(allow), parse_egress_list(deny)
    publicly_denied = parse_egress_list(DENIED_RANGES)
    loopback_or_unspecified = parse_egress_list(("127.0.0.0/8", "0.0.0.0/32", "::1", "::"))
    allow_all = policy == "allow-all"

    def check(address, port, hostname=None, parse_ip=parse_ip):
        shown = f"{hostname} ({address})" if hostname else str(address)
        ip = parse_ip(address)
        if ip is None:
            return f"connection to {shown} is not allowed by the egress policy: not an IP address"
        if service_port and port == service_port and (
                loopback_or_unspecified(ip) or (is_local is not None and is_local(address))):
            return (f"connection to {shown} port {port} is not allowed by the egress policy: "
                    "function code cannot call this service's own API")
        if is_denied(ip, hostname):
            return f"connection to {shown} is not allowed by the egress policy: the address is in FUNCTIONS_EGRESS_DENY"
        if allow_all or is_allowed(ip, hostname) or not publicly_denied(ip):
            return None
        return (f"connection to {shown} is not allowed by the egress policy: loopback, private, link-local "
                "and reserved addresses are denied (FUNCTIONS_EGRESS_ALLOW lists exceptions)")

    return check


def load_egress(env):
    """FUNCTIONS_EGRESS_* and FUNCTIONS_SERVICE_PORT -> the egress part of a kernel's config.
    Raises ValueError("<VARIABLE>: <problem>")."""
    policy = (env.get("FUNCTIONS_EGRESS_POLICY") or "").strip() or "public-only"
    if policy not in POLICIES:
        raise ValueError(f"FUNCTIONS_EGRESS_POLICY: expected public-only or allow-all, got {policy!r}")
    lists = {}
    for name in ("FUNCTIONS_EGRESS_ALLOW", "FUNCTIONS_EGRESS_DENY"):
        lists[name] = split_list(env.get(name))
        try:
            parse_egress_list(lists[name])
        except ValueError as e:
            raise ValueError(f"{name}: has an invalid entry: {e}") from None
    raw = (env.get("FUNCTIONS_SERVICE_PORT") or "").strip() or "0"
    if not raw.isdigit() or int(raw) > 65535:
        raise ValueError(f"FUNCTIONS_SERVICE_PORT: expected an integer 0..65535, got {raw!r}")
    return {"policy": policy, "allow": lists["FUNCTIONS_EGRESS_ALLOW"], "deny": lists["FUNCTIONS_EGRESS_DENY"],
            "servicePort": int(raw) or None}


# ---------------------------------------------------------------------------------------------
# What a kernel may read and write.

LIBRARY_DIRS = ("/usr/lib", "/lib", "/usr/lib64", "/lib64", "/usr/local/lib")
ZONEINFO_DIRS = ("/usr/share/zoneinfo", "/usr/share/lib/zoneinfo", "/etc/zoneinfo")
# Read by C code only (the dynamic loader, the resolver, OpenSSL): Landlock allows them, the audit
# hook (which sees Python's own open() calls) does not. Not /etc/ssl itself: it holds private/.
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
                "/etc/host.conf", "/etc/ssl/openssl.cnf", "/etc/ssl/cert.pem")
SYSTEM_DIRS = ("/etc/ssl/certs", "/etc/pki/tls/certs", "/etc/pki/ca-trust/extracted")


def resolve(path, _lstat=posix.lstat, _readlink=posix.readlink, _islink=stat.S_ISLNK):
    """The absolute path `path` (absolute) stands for, symbolic links followed; components that do
    not exist are kept as they are. None past 40 links. Uses only C functions captured here."""
    pending = [p for p in path.split("/") if p]
    pending.reverse()
    resolved = ""
    links = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            resolved = resolved[:resolved.rfind("/")] if resolved else ""
            continue
        candidate = resolved + "/" + name
        try:
            mode = _lstat(candidate).st_mode
        except (OSError, ValueError):
            resolved = candidate
            continue
        if _islink(mode):
            links += 1
            if links > 40:
                return None
            try:
                target = _readlink(candidate)
            except OSError:
                resolved = candidate
                continue
            if target.startswith("/"):
                resolved = ""
            more = [p for p in target.split("/") if p]
            more.reverse()
            pending.extend(more)
            continue
        resolved = candidate
    return resolved or "/"


def _existing(paths):
    """Resolved, existing, deduplicated; never `/` (that would allow everything)."""
    out = []
    for path in paths:
        if not path or not os.path.isabs(path):
            continue
        real = resolve(os.path.normpath(path))
        if real and real != "/" and os.path.exists(real) and real not in out:
            out.append(real)
    return out


def python_roots(kernel_dir):
    """Where Python and its packages live: readable by function code under both layers."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, kernel_dir,
             *sys.path, *ZONEINFO_DIRS, "/etc/localtime", "/dev/urandom"]
    return _existing(paths)


# ---------------------------------------------------------------------------------------------
# Layer 1: Landlock, through the raw system calls.

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # x86_64 and aarch64 alike
PR_SET_NO_NEW_PRIVS = 38
RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4 (NET_CONNECT_TCP, 1 << 1, stays unhandled: egress is by address, below)
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV  # what a rule on a file may hold

READ = FS_READ_FILE | FS_READ_DIR
SCRATCH = (READ | FS_WRITE_FILE | FS_TRUNCATE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG
           | FS_MAKE_SYM | FS_REFER)


class LandlockUnavailable(Exception):
    pass


def handled_fs(abi):
    rights = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    return ctypes, libc


def apply_landlock(read_paths, rw_paths):
    """Restricts this thread (the kernel's only one) and its future children for good. Returns the ABI."""
    ctypes, libc = _libc()

    def call(*args):
        rc = libc.syscall(*args)
        if rc < 0:
            err = ctypes.get_errno()
            raise LandlockUnavailable(f"{os.strerror(err)} (errno {err})")
        return rc

    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64", "arm64"):
        raise LandlockUnavailable(f"not on Linux x86_64/aarch64 ({sys.platform} {os.uname().machine})")
    abi = libc.syscall(ctypes.c_long(SYS_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 0:
        err = ctypes.get_errno()
        raise LandlockUnavailable(f"the kernel has no Landlock: {os.strerror(err)} (errno {err})")
    if len(os.listdir("/proc/self/task")) > 1:
        raise LandlockUnavailable("the kernel process has more than one thread; Landlock would restrict only one")
    fs = handled_fs(abi)
    fields = [fs]
    if abi >= 4:
        fields.append(NET_BIND_TCP)  # no rule: no TCP port can be bound, so no server
    if abi >= 6:
        fields.append(SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET)
    attr = struct.pack(f"={len(fields)}Q", *fields)
    attr_buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = call(ctypes.c_long(SYS_CREATE_RULESET), attr_buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    try:
        for paths, rights in ((read_paths, READ), (rw_paths, SCRATCH)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # gone since it was listed: nothing to allow
                try:
                    allowed = rights & fs
                    if not stat.S_ISDIR(os.fstat(fd).st_mode):
                        allowed &= FILE_RIGHTS
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
                    call(ctypes.c_long(SYS_ADD_RULE), ctypes.c_long(ruleset), ctypes.c_long(RULE_PATH_BENEATH),
                         rule, ctypes.c_uint32(0))
                finally:
                    os.close(fd)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise LandlockUnavailable(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(err)}")
        call(ctypes.c_long(SYS_RESTRICT_SELF), ctypes.c_long(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    # Proof rather than trust: the root directory must now be out of reach.
    try:
        os.close(os.open("/", os.O_RDONLY | os.O_DIRECTORY))
    except PermissionError:
        return abi
    raise LandlockUnavailable("the ruleset was accepted but / is still readable")


def drop_capabilities():
    """Root, or a process with capabilities, keeps none: no raw sockets, no chown, no module loading,
    no raising of rlimits. Best effort; harmless without capabilities."""
    try:
        ctypes, libc = _libc()
        cap = 0
        while libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP, until EINVAL past the last one
            cap += 1
        libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
        header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
        data = ctypes.create_string_buffer(24)  # two {effective, permitted, inheritable}, all zero
        libc.capset(header, data)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# Layer 2: the audit hook.

_RUN = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen")
_SIGNALS = ("os.kill", "os.killpg", "signal.pthread_kill")
_INTROSPECTION = ("gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.addaudithook", "setopencodehook",
                  "resource.setrlimit", "resource.prlimit")
# Path-changing events: (index of the path, index of its dir_fd or None), checked as writes.
_WRITES = {
    "os.mkdir": ((0, 2),), "os.rmdir": ((0, 1),), "os.remove": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
    "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),), "os.truncate": ((0, None),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
    "os.chflags": ((0, None),), "os.lchflags": ((0, None),), "shutil.rmtree": ((0, 1),),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def local_address_probe():
    """(is_local, probes): is_local(address) binds a UDP socket to it, which works only for this
    machine's own addresses; the hook lets the sockets in `probes` (its own) bind."""
    probes = []
    c_socket, AF_INET, AF_INET6, SOCK_DGRAM = _socket.socket, socket.AF_INET, socket.AF_INET6, socket.SOCK_DGRAM

    def is_local(address):
        ip = parse_ip(address)
        if ip is None:
            return False
        probe = c_socket(AF_INET if ip[0] == 4 else AF_INET6, SOCK_DGRAM)
        probes.append(probe)
        try:
            probe.bind((address.strip("[]").partition("%")[0], 0))
            return True
        except OSError:
            return False
        finally:
            probes.remove(probe)
            probe.close()

    return is_local, probes


def install_audit_hook(read_roots, write_roots, check_egress, allow_local_sockets, probes):
    """Adds the hook. What it uses is captured here, in its closure: rebinding a module attribute
    (this module's, os's, socket's) afterwards changes nothing it does."""
    import pathlib

    # Module globals, captured: code that reaches this module cannot swap them under the hook.
    resolve_, parse_ip_, writes, write_flags = resolve, parse_ip, dict(_WRITES), _WRITE_FLAGS
    read_roots = tuple(read_roots) + tuple(write_roots)
    write_roots = tuple(write_roots)
    getcwd, readlink, get_ident, decode = posix.getcwd, posix.readlink, _thread.get_ident, bytes.decode
    family_of = _socket.socket.__dict__["family"].__get__  # the C slot: a subclass cannot override it
    AF_INET, AF_INET6, AF_UNIX, SOCK_STREAM = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, socket.SOCK_STREAM
    c_getaddrinfo = _socket.getaddrinfo
    path_fspath, DirEntry, entry_path = pathlib.PurePath.__fspath__, os.DirEntry, os.DirEntry.path.__get__
    names = {}  # thread -> the host name it last asked socket.getaddrinfo about (None: an address)

    def refuse(message):
        raise PermissionError(message)

    def text(path):
        """A path argument as str; None for a descriptor; a refusal for a path-like of unknown make
        (its __fspath__ could answer one path to this check and another to open())."""
        if type(path) is str:
            return path
        if type(path) is bytes:
            return decode(path, "utf-8", "surrogateescape")
        if type(path) is int:
            return None
        if type(path) is DirEntry:
            return text(entry_path(path))
        if getattr(type(path), "__fspath__", None) is path_fspath:  # pathlib's own
            return path_fspath(path)
        refuse(f"a path given as {type(path).__name__} is not allowed in functions: use a str")

    def absolute(path, dir_fd=-1):
        if path.startswith("/"):
            return resolve_(path)
        if type(dir_fd) is int and dir_fd >= 0:
            try:
                base = readlink(f"/proc/self/fd/{dir_fd}")
            except OSError:
                refuse("a path relative to a directory descriptor is not allowed in functions")
        else:
            base = getcwd()
        return resolve_(base + "/" + path)

    def within(path, roots, beneath=False):
        if path is not None:
            for root in roots:
                if (path == root and not beneath) or path.startswith(root + "/"):
                    return True
        return False

    def check_read(path, shown, what):
        if not within(path, read_roots):
            refuse(f"{what} {shown!r} is not allowed in functions: only the Python installation, its packages "
                   "and the scratch directory (tempfile.gettempdir()) are readable")

    def check_write(path, shown, what, beneath=False):
        if not within(path, write_roots, beneath):
            refuse(f"{what} {shown!r} is not allowed in functions: only the scratch directory "
                   "(tempfile.gettempdir()) is writable")

    def on_open(args):
        given = text(args[0])
        if given is None:
            return  # a descriptor already open
        if args[2] & write_flags:
            check_write(absolute(given), given, "writing")
        else:
            check_read(absolute(given), given, "reading")

    def on_listdir(args):
        given = "." if args[0] is None else text(args[0])
        if given is not None:
            check_read(absolute(given or "."), given, "listing")

    def on_write(event, args):
        for index, fd_index in writes[event]:
            given = text(args[index]) if index < len(args) else None
            if given is not None:
                dir_fd = args[fd_index] if fd_index is not None and fd_index < len(args) else -1
                # Beneath the scratch directory: the directory itself is not the function's to
                # remove, rename, replace or chmod (the server removes it when the kernel ends).
                check_write(absolute(given, dir_fd), given, "removing" if event == "os.remove" else "changing", True)

    def on_connect(args):
        sock, address = args[0], args[1]
        if address is None:
            return  # sendmsg on a connected socket
        family = family_of(sock)
        if family != AF_INET and family != AF_INET6:
            if allow_local_sockets:
                return
            refuse("connection to a local socket is not allowed by the egress policy" if family == AF_UNIX
                   else "connection over this socket family is not allowed by the egress policy")
        if type(address) is not tuple or len(address) < 2 or type(address[0]) is not str:
            refuse("connection is not allowed by the egress policy: malformed address")
        host, port = address[0], address[1]
        ip = parse_ip_(host)
        if ip is None:
            refuse(f"connection to {host!r} is not allowed by the egress policy: connect to an address "
                   "(socket.create_connection resolves the name first), not to a name")
        hostname = names.get(get_ident())
        reason = check_egress(host, port, hostname)
        if reason is None and hostname is not None:
            without = check_egress(host, port, None)
            if without is not None:
                # Allowed only because FUNCTIONS_EGRESS_ALLOW names the host: the address must
                # really be one of that name's, not any address after a look-up of the name.
                try:
                    answers = [parse_ip_(info[4][0]) for info in c_getaddrinfo(hostname, port, 0, SOCK_STREAM)]
                except OSError:
                    answers = []
                if ip not in answers:
                    reason = without
        if reason is not None:
            refuse(reason)

    def on_getaddrinfo(args):
        host = args[0]
        if type(host) is bytes:
            host = decode(host, "ascii", "replace")
        name = None
        if type(host) is str and parse_ip_(host) is None:
            name = host.lower()
            name = name[:-1] if name.endswith(".") else name
        if len(names) > 1000:
            names.clear()
        names[get_ident()] = name

    def on_bind(args):
        if args[0] not in probes:
            refuse("listening for connections is not allowed in functions (socket.bind)")

    def refusal(message):
        return lambda args: refuse(message)

    handlers = {"open": on_open, "os.listdir": on_listdir, "os.scandir": on_listdir,
                "socket.connect": on_connect, "socket.sendto": on_connect, "socket.sendmsg": on_connect,
                "socket.getaddrinfo": on_getaddrinfo, "socket.bind": on_bind}
    for event in writes:
        handlers[event] = (lambda event: lambda args: on_write(event, args))(event)
    for event in _RUN:
        handlers[event] = refusal(f"running programs or processes is not allowed in functions ({event})")
    for event in _SIGNALS:
        handlers[event] = refusal(f"sending signals is not allowed in functions ({event})")
    for event in _INTROSPECTION:
        handlers[event] = refusal(f"{event} is not allowed in functions")
    lookup = handlers.get

    def hook(event, args):
        handler = lookup(event)
        if handler is not None:
            handler(args)
        elif event[:7] == "ctypes.":
            refuse(f"ctypes is not allowed in functions ({event})")

    sys.addaudithook(hook)
    # Not audited by Python, so taken away (with Landlock, signals to other processes fail anyway).
    import signal
    for module, name in ((os, "pidfd_open"), (posix, "pidfd_open"), (signal, "pidfd_send_signal"),
                         (sys.modules.get("_signal"), "pidfd_send_signal")):
        if module is not None:
            module.__dict__.pop(name, None)


# ---------------------------------------------------------------------------------------------


def apply(config, kernel_dir):
    """Confines this process for good. Returns {"confinement": "landlock-abi-N" | "audit-hook",
    "note": why Landlock is not in force, or None}."""
    scratch = config.get("scratchDir")
    egress = config.get("egress") or {}
    read = python_roots(kernel_dir)
    writable = _existing([scratch] if scratch else []) + ["/dev/null"]
    confinement, note = "audit-hook", None
    if config.get("landlock", True):  # false: tests only, to prove the audit hook alone
        try:
            drop_capabilities()
            system = [p for p in _existing(LIBRARY_DIRS + SYSTEM_DIRS + SYSTEM_FILES) if p not in read]
            confinement = f"landlock-abi-{apply_landlock(read + system, writable)}"
        except (LandlockUnavailable, OSError) as e:
            note = f"Landlock is not in force: {e}"
    else:
        note = "Landlock is off in this kernel's configuration (tests only)"
    if config.get("auditHook", True):  # false: tests only, to prove Landlock alone
        # Imported before the hook, which refuses ctypes' events: its import opens libraries, and
        # packages (numpy) import it at their own import, though functions cannot use it.
        import ctypes  # noqa: F401
        policy = egress.get("policy") or "public-only"
        is_local, probes = local_address_probe()
        check = make_egress_check(policy, egress.get("allow") or (), egress.get("deny") or (),
                                  egress.get("servicePort"), is_local)
        install_audit_hook(read, writable, check, policy == "allow-all", probes)
    elif confinement == "audit-hook":
        confinement = "none"
    return {"confinement": confinement, "note": note}
