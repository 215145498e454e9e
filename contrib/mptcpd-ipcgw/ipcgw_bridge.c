// SPDX-License-Identifier: BSD-3-Clause
/*
 * ipcgw-bridge: an mptcpd plugin that hands mptcpd's path-manager events to
 * an ipcgw gateway and runs the gateway's commands through mptcpd's own API.
 *
 * Wire: the gateway's JSON Lines profile over a unix socket
 * (codec=json&framing=delimited:lf): Hello -> Welcome, then Command lines in,
 * each answered by one "mptcpd.result" line, and one "mptcpd.event" line out
 * per mptcpd callback. Both go up as Commands with request_id 0, args
 * {request_id, ok, value, error} (a Result's fields) and {kind, attrs, time}
 * (an Event's): the gateway's session layer takes only Reports and Commands
 * from a client.
 *
 * Safety: every input is bounded (a line <= MAX_LINE, strings <= MAX_STR,
 * at most MAX_ARGS arguments, nesting <= MAX_DEPTH), every number range
 * checked, output queued in a fixed buffer (a gateway that stops reading is
 * dropped, never buffered without bound). No threads: one l_io on mptcpd's
 * ELL main loop. The gateway must run as the configured uid (SO_PEERCRED),
 * else the bridge closes the socket before saying a word.
 *
 * Configuration (mptcpd 0.12 has no per-plugin settings, so environment):
 *   IPCGW_BRIDGE_URL   unix:///path, unix:@abstract or /path
 *                      (default unix:///run/ipcgw-mptcpd.sock)
 *   IPCGW_BRIDGE_UID   uid the gateway must run as (default: mptcpd's euid)
 *   IPCGW_BRIDGE_TOKEN optional, sent in Hello (the gateway's --token-file)
 *   IPCGW_BRIDGE_NAME  Hello name (default mptcpd-bridge)
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#include <ell/idle.h>
#include <ell/io.h>
#include <ell/log.h>
#include <ell/timeout.h>
#include <ell/util.h>
#pragma GCC diagnostic pop

#include <mptcpd/addr_info.h>
#include <mptcpd/path_manager.h>
#include <mptcpd/plugin.h>
#include <mptcpd/types.h>

#define PLUGIN_NAME "ipcgw-bridge"
#define DEFAULT_URL "unix:///run/ipcgw-mptcpd.sock"
#define MAX_LINE   65536            /* one line from the gateway */
#define MAX_OUT    (256 * 1024)     /* queued output before the gateway is dropped */
#define MAX_REPLY  16384            /* one Result or Event line */
#define MAX_STR    128
#define MAX_KEY    32
#define MAX_ARGS   16
#define MAX_DEPTH  4
#define RETRY_SECONDS 1
/* What goes up is a Command with request_id 0 (no answer wanted): ipcgw's session
 * layer passes only Reports and Commands from a client to the handler. */
#define UP_OPEN "{\"type\":\"command\",\"request_id\":0,\"op\":\"mptcpd."

/* ------------------------------------------------------------------ state */

enum state { DOWN, HELLO_SENT, READY };

static struct bridge {
        struct mptcpd_pm *pm;
        struct sockaddr_un sun;
        socklen_t sun_len;
        char where[112];
        uid_t want_uid;
        char token[MAX_STR];
        char name[64];
        int fd;
        struct l_io *io;
        enum state state;
        unsigned int generation;     /* bumped per connection: late replies go nowhere */
        bool closing;
        char in[MAX_LINE];
        size_t in_len;
        char out[MAX_OUT];
        size_t out_len;
        struct l_timeout *retry;
        int last_errno;              /* log a failing connect once, not every second */
        unsigned long dropped;
} B = { .fd = -1 };

static void schedule_close(char const *why);

/* ------------------------------------------------------------ JSON output */

struct buf {
        char *p;
        size_t len, cap;
        bool full;
};

static void put(struct buf *b, char const *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, char const *fmt, ...)
{
        if (b->full)
                return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t) n >= b->cap - b->len)
                b->full = true;
        else
                b->len += (size_t) n;
}

/* A JSON string of bytes we produced or validated: escape what JSON needs. */
static void put_str(struct buf *b, char const *s)
{
        put(b, "\"");
        for (; *s && !b->full; s++) {
                unsigned char c = (unsigned char) *s;
                if (c == '"' || c == '\\')
                        put(b, "\\%c", c);
                else if (c < 0x20 || c >= 0x7f)
                        put(b, "\\u%04x", c);
                else
                        put(b, "%c", c);
        }
        put(b, "\"");
}

/* {"...":..., "saddr": "a", "sport": p} for one sockaddr, prefix s or d. */
static void put_addr(struct buf *b, char prefix, struct sockaddr const *sa)
{
        char text[INET6_ADDRSTRLEN] = "";
        unsigned int port = 0;
        if (sa == NULL)
                return;
        if (sa->sa_family == AF_INET) {
                struct sockaddr_in const *in = (struct sockaddr_in const *) sa;
                inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
                port = ntohs(in->sin_port);
        } else if (sa->sa_family == AF_INET6) {
                struct sockaddr_in6 const *in6 = (struct sockaddr_in6 const *) sa;
                inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
                port = ntohs(in6->sin6_port);
        } else {
                return;
        }
        put(b, ",\"%caddr\":", prefix);
        put_str(b, text);
        put(b, ",\"%cport\":%u", prefix, port);
}

/* ------------------------------------------------------------- socket I/O */

static bool on_writable(struct l_io *io, void *data);

static void flush_out(void)
{
        while (B.out_len > 0 && B.fd >= 0) {
                ssize_t n = send(B.fd, B.out, B.out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                break;
                        schedule_close("write to the gateway failed");
                        return;
                }
                memmove(B.out, B.out + n, B.out_len - (size_t) n);
                B.out_len -= (size_t) n;
        }
        if (B.out_len > 0 && B.io)
                l_io_set_write_handler(B.io, on_writable, NULL, NULL);
}

static bool on_writable(struct l_io *io, void *data)
{
        (void) io;
        (void) data;
        flush_out();
        return B.out_len > 0 && !B.closing;
}

/* Queue one line (adds the '\n'); a gateway that stops reading is dropped. */
static void send_line(struct buf const *b)
{
        if (B.fd < 0 || B.closing)
                return;
        if (b->full) {
                l_error(PLUGIN_NAME ": a message did not fit in %d bytes; dropped", MAX_REPLY);
                return;
        }
        if (B.out_len + b->len + 1 > sizeof(B.out)) {
                schedule_close("the gateway does not read (output queue full)");
                return;
        }
        memcpy(B.out + B.out_len, b->p, b->len);
        B.out_len += b->len;
        B.out[B.out_len++] = '\n';
        flush_out();
}

/* --------------------------------------------------------- JSON input */

enum jtype { J_NONE, J_STR, J_INT, J_BOOL, J_NULL, J_OTHER };

struct jval {
        enum jtype t;
        long long i;
        char s[MAX_STR];
        bool truncated;
};

struct kv {
        char k[MAX_KEY];
        struct jval v;
};

struct msg {
        char type[16];
        long long request_id;
        char op[40];
        char reason[256];
        struct kv args[MAX_ARGS];
        int nargs;
};

struct cur {
        char const *p, *end;
};

static void ws(struct cur *c)
{
        while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r'))
                c->p++;
}

static bool lit(struct cur *c, char const *word)
{
        size_t n = strlen(word);
        if ((size_t) (c->end - c->p) < n || memcmp(c->p, word, n) != 0)
                return false;
        c->p += n;
        return true;
}

/* A string into out (cap bytes incl. NUL); escapes are kept as their letter,
 * \uXXXX as '?': what a bridge needs (op names, addresses) has none. */
static bool parse_str(struct cur *c, char *out, size_t cap, bool *truncated)
{
        size_t n = 0;
        if (c->p >= c->end || *c->p != '"')
                return false;
        c->p++;
        *truncated = false;
        while (c->p < c->end && *c->p != '"') {
                char ch = *c->p++;
                if ((unsigned char) ch < 0x20)
                        return false;
                if (ch == '\\') {
                        if (c->p >= c->end)
                                return false;
                        ch = *c->p++;
                        if (ch == 'u') {
                                if (c->end - c->p < 4)
                                        return false;
                                c->p += 4;
                                ch = '?';
                        } else if (ch == 'n' || ch == 't' || ch == 'r' || ch == 'b' || ch == 'f') {
                                ch = ' ';
                        }
                }
                if (n + 1 < cap)
                        out[n++] = ch;
                else
                        *truncated = true;
        }
        if (c->p >= c->end)
                return false;
        c->p++;
        out[n] = '\0';
        return true;
}

static bool parse_value(struct cur *c, struct jval *v, int depth);

/* Skip an object or array (its values are not needed), depth-bounded. */
static bool skip_container(struct cur *c, int depth)
{
        char close = *c->p == '{' ? '}' : ']';
        bool object = close == '}';
        struct jval scratch;
        if (depth > MAX_DEPTH)
                return false;
        c->p++;
        ws(c);
        if (c->p < c->end && *c->p == close) {
                c->p++;
                return true;
        }
        for (;;) {
                ws(c);
                if (object) {
                        bool t;
                        char key[MAX_KEY];
                        if (!parse_str(c, key, sizeof(key), &t))
                                return false;
                        ws(c);
                        if (c->p >= c->end || *c->p++ != ':')
                                return false;
                        ws(c);
                }
                if (!parse_value(c, &scratch, depth + 1))
                        return false;
                ws(c);
                if (c->p >= c->end)
                        return false;
                if (*c->p == ',') {
                        c->p++;
                        continue;
                }
                if (*c->p++ != close)
                        return false;
                return true;
        }
}

static bool parse_value(struct cur *c, struct jval *v, int depth)
{
        memset(v, 0, sizeof(*v));
        ws(c);
        if (c->p >= c->end)
                return false;
        char ch = *c->p;
        if (ch == '"') {
                v->t = J_STR;
                return parse_str(c, v->s, sizeof(v->s), &v->truncated);
        }
        if (ch == '{' || ch == '[') {
                v->t = J_OTHER;
                return skip_container(c, depth);
        }
        if (lit(c, "true")) {
                v->t = J_BOOL;
                v->i = 1;
                return true;
        }
        if (lit(c, "false")) {
                v->t = J_BOOL;
                return true;
        }
        if (lit(c, "null")) {
                v->t = J_NULL;
                return true;
        }
        if (ch == '-' || (ch >= '0' && ch <= '9')) {
                char const *start = c->p;
                bool integral = true;
                if (*c->p == '-')
                        c->p++;
                while (c->p < c->end && ((*c->p >= '0' && *c->p <= '9') || *c->p == '.'
                                         || *c->p == 'e' || *c->p == 'E' || *c->p == '+'
                                         || *c->p == '-')) {
                        if (*c->p < '0' || *c->p > '9')
                                integral = false;
                        c->p++;
                }
                size_t n = (size_t) (c->p - start);
                if (n == 0 || n > 20)
                        return false;
                if (!integral) {
                        v->t = J_OTHER;
                        return true;
                }
                char digits[24];
                memcpy(digits, start, n);
                digits[n] = '\0';
                errno = 0;
                char *stop;
                v->i = strtoll(digits, &stop, 10);
                if (errno || *stop)
                        return false;
                v->t = J_INT;
                return true;
        }
        return false;
}

/* The flat "args" object of a Command: scalars only, at most MAX_ARGS. */
static bool parse_args(struct cur *c, struct msg *m)
{
        c->p++;
        ws(c);
        if (c->p < c->end && *c->p == '}') {
                c->p++;
                return true;
        }
        for (;;) {
                bool t;
                ws(c);
                if (m->nargs >= MAX_ARGS)
                        return false;
                struct kv *kv = &m->args[m->nargs++];
                if (!parse_str(c, kv->k, sizeof(kv->k), &t) || t)
                        return false;
                ws(c);
                if (c->p >= c->end || *c->p++ != ':')
                        return false;
                ws(c);
                if (c->p < c->end && (*c->p == '{' || *c->p == '['))
                        return false;
                if (!parse_value(c, &kv->v, 2) || kv->v.truncated)
                        return false;
                ws(c);
                if (c->p >= c->end)
                        return false;
                if (*c->p == ',') {
                        c->p++;
                        continue;
                }
                return *c->p++ == '}';
        }
}

static bool parse_msg(char const *line, size_t len, struct msg *m)
{
        struct cur c = { line, line + len };
        memset(m, 0, sizeof(*m));
        ws(&c);
        if (c.p >= c.end || *c.p++ != '{')
                return false;
        ws(&c);
        if (c.p < c.end && *c.p == '}')
                return false;
        for (;;) {
                bool t;
                char key[MAX_KEY];
                struct jval v;
                ws(&c);
                if (!parse_str(&c, key, sizeof(key), &t) || t)
                        return false;
                ws(&c);
                if (c.p >= c.end || *c.p++ != ':')
                        return false;
                ws(&c);
                if (strcmp(key, "args") == 0 && c.p < c.end && *c.p == '{') {
                        if (!parse_args(&c, m))
                                return false;
                } else {
                        if (!parse_value(&c, &v, 1))
                                return false;
                        size_t vlen = v.t == J_STR ? strlen(v.s) : 0;
                        if (strcmp(key, "type") == 0) {
                                if (v.t != J_STR || v.truncated || vlen >= sizeof(m->type))
                                        return false;
                                memcpy(m->type, v.s, vlen + 1);
                        } else if (strcmp(key, "op") == 0) {
                                if (v.t != J_STR || v.truncated || vlen >= sizeof(m->op))
                                        return false;
                                memcpy(m->op, v.s, vlen + 1);
                        }
                        else if (strcmp(key, "request_id") == 0 && v.t == J_INT)
                                m->request_id = v.i;
                        else if (strcmp(key, "reason") == 0 && v.t == J_STR)
                                snprintf(m->reason, sizeof(m->reason), "%s", v.s);
                }
                ws(&c);
                if (c.p >= c.end)
                        return false;
                if (*c.p == ',') {
                        c.p++;
                        continue;
                }
                if (*c.p++ != '}')
                        return false;
                ws(&c);
                return c.p == c.end && m->type[0];
        }
}

/* ------------------------------------------------------ argument access */

static struct kv const *arg(struct msg const *m, char const *key)
{
        for (int i = 0; i < m->nargs; i++)
                if (strcmp(m->args[i].k, key) == 0)
                        return &m->args[i];
        return NULL;
}

/* Every argument must be one the op knows: a typo is an error, not a default. */
static char const *unknown_arg(struct msg const *m, char const *const *known)
{
        for (int i = 0; i < m->nargs; i++) {
                char const *const *k = known;
                for (; *k; k++)
                        if (strcmp(m->args[i].k, *k) == 0)
                                break;
                if (!*k)
                        return m->args[i].k;
        }
        return NULL;
}

struct cmd {
        struct msg const *m;
        char err[200];
};

static bool int_arg(struct cmd *c, char const *key, long long lo, long long hi,
                    bool required, long long *out)
{
        struct kv const *kv = arg(c->m, key);
        if (kv == NULL) {
                if (required)
                        snprintf(c->err, sizeof(c->err), "missing argument %s", key);
                return !required;
        }
        if ((kv->v.t != J_INT && kv->v.t != J_BOOL) || kv->v.i < lo || kv->v.i > hi) {
                snprintf(c->err, sizeof(c->err), "%s must be an integer %lld..%lld", key, lo, hi);
                return false;
        }
        *out = kv->v.i;
        return true;
}

/* addr (text) + port (host order) -> sockaddr; port key may be NULL. */
static bool sa_arg(struct cmd *c, char const *key, char const *port_key, bool port_required,
                   struct sockaddr_storage *ss)
{
        struct kv const *kv = arg(c->m, key);
        long long port = 0;
        memset(ss, 0, sizeof(*ss));
        if (kv == NULL || kv->v.t != J_STR) {
                snprintf(c->err, sizeof(c->err), "%s must be an IPv4 or IPv6 address", key);
                return false;
        }
        if (port_key && !int_arg(c, port_key, 0, 65535, port_required, &port))
                return false;
        struct sockaddr_in *in = (struct sockaddr_in *) ss;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) ss;
        if (inet_pton(AF_INET, kv->v.s, &in->sin_addr) == 1) {
                in->sin_family = AF_INET;
                in->sin_port = htons((uint16_t) port);
        } else if (inet_pton(AF_INET6, kv->v.s, &in6->sin6_addr) == 1) {
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons((uint16_t) port);
        } else {
                snprintf(c->err, sizeof(c->err), "%s must be an IPv4 or IPv6 address", key);
                return false;
        }
        return true;
}

/* ----------------------------------------------------------- replies */

static void reply(long long request_id, bool ok, char const *value_json, char const *error)
{
        char text[MAX_REPLY];
        struct buf b = { text, 0, sizeof(text), false };
        if (request_id == 0)
                return;
        put(&b, UP_OPEN "result\",\"args\":{\"request_id\":%lld,\"ok\":%s,\"value\":%s,"
            "\"error\":", request_id, ok ? "true" : "false", value_json ? value_json : "null");
        put_str(&b, error ? error : "");
        put(&b, "}}");
        if (b.full) {  /* a value too large: say so rather than go silent */
                b.len = 0;
                b.full = false;
                put(&b, UP_OPEN "result\",\"args\":{\"request_id\":%lld,\"ok\":false,"
                    "\"value\":null,\"error\":\"mptcpd bridge: reply larger than %d bytes\"}}",
                    request_id, MAX_REPLY);
        }
        send_line(&b);
}

static void reply_rc(struct cmd *c, int rc)
{
        char err[160];
        if (rc == 0) {
                reply(c->m->request_id, true, NULL, NULL);
                return;
        }
        int code = rc < 0 ? -rc : rc;
        snprintf(err, sizeof(err), "mptcpd refused %s: %s (error %d)", c->m->op,
                 code == 1 && rc < 0 ? "failed" : strerror(code), rc);
        reply(c->m->request_id, false, NULL, err);
}

/* Async kernel-PM reads: their reply comes later, to the connection that asked. */
struct pending {
        long long request_id;
        unsigned int generation;
        bool dump;
        struct buf b;
        int count;
        char text[MAX_REPLY - 256];
};

static void put_addr_info(struct buf *b, struct mptcpd_addr_info const *info)
{
        char text[INET6_ADDRSTRLEN] = "";
        unsigned int port = 0;
        struct sockaddr const *sa = mptcpd_addr_info_get_addr(info);
        if (sa && sa->sa_family == AF_INET) {
                struct sockaddr_in const *in = (struct sockaddr_in const *) sa;
                inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
                port = ntohs(in->sin_port);
        } else if (sa && sa->sa_family == AF_INET6) {
                struct sockaddr_in6 const *in6 = (struct sockaddr_in6 const *) sa;
                inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
                port = ntohs(in6->sin6_port);
        }
        put(b, "{\"id\":%u,\"addr\":", (unsigned int) mptcpd_addr_info_get_id(info));
        put_str(b, text);
        put(b, ",\"port\":%u,\"flags\":%u,\"ifindex\":%d}", port,
            (unsigned int) mptcpd_addr_info_get_flags(info), mptcpd_addr_info_get_index(info));
}

static void on_addr(struct mptcpd_addr_info const *info, void *data)
{
        struct pending *p = data;
        if (p->count > 0)
                put(&p->b, ",");
        put_addr_info(&p->b, info);
        p->count++;
}

static void on_addr_done(void *data)
{
        struct pending *p = data;
        if (p->generation == B.generation && B.state == READY) {
                if (p->dump) {
                        put(&p->b, "]");
                        reply(p->request_id, !p->b.full, p->b.full ? NULL : p->text,
                              p->b.full ? "mptcpd bridge: too many endpoints for one reply" : NULL);
                } else if (p->count == 1 && !p->b.full) {
                        reply(p->request_id, true, p->text, NULL);
                } else {
                        reply(p->request_id, false, NULL, "no such endpoint (mptcpd get_addr)");
                }
        }
        free(p);
}

static void on_limits(struct mptcpd_limit const *limits, size_t len, void *data)
{
        struct pending *p = data;
        long long subflows = 0, accepted = 0;
        for (size_t i = 0; i < len; i++) {
                if (limits[i].type == MPTCPD_LIMIT_SUBFLOWS)
                        subflows = limits[i].limit;
                else if (limits[i].type == MPTCPD_LIMIT_RCV_ADD_ADDRS)
                        accepted = limits[i].limit;
        }
        put(&p->b, "{\"subflows\":%lld,\"add_addr_accepted\":%lld}", subflows, accepted);
        if (p->generation == B.generation && B.state == READY)
                reply(p->request_id, true, p->text, NULL);
        free(p);
}

static struct pending *new_pending(struct cmd *c, bool dump)
{
        struct pending *p = calloc(1, sizeof(*p));
        if (p == NULL)
                return NULL;
        p->request_id = c->m->request_id;
        p->generation = B.generation;
        p->dump = dump;
        p->b = (struct buf) { p->text, 0, sizeof(p->text), false };
        if (dump)
                put(&p->b, "[");
        return p;
}

/* ----------------------------------------------------------- commands */

#define TOKEN_MAX 0xFFFFFFFFLL

/* Each op and the arguments it takes (NULL-terminated). */
static struct { char const *name; char const *known[9]; } const OPS[] = {
        { "pm.add_addr", { "token", "addr", "port", "id", NULL } },
        { "pm.remove_addr", { "token", "addr", "port", "id", NULL } },
        { "pm.add_subflow", { "token", "local_id", "remote_id", "laddr", "lport", "raddr",
                              "rport", "backup", NULL } },
        { "pm.remove_subflow", { "token", "laddr", "lport", "raddr", "rport", NULL } },
        { "pm.set_backup", { "token", "laddr", "lport", "raddr", "rport", "backup", NULL } },
        { "kpm.add_addr", { "addr", "port", "id", "flags", "ifindex", NULL } },
        { "kpm.remove_addr", { "id", NULL } },
        { "kpm.get_addr", { "id", NULL } },
        { "kpm.set_flags", { "addr", "port", "flags", NULL } },
        { "kpm.set_limits", { "subflows", "add_addr_accepted", NULL } },
        { "kpm.dump_addrs", { NULL } },
        { "kpm.flush_addrs", { NULL } },
        { "kpm.get_limits", { NULL } },
        { "bridge.ping", { NULL } },
};

static void run_command(struct msg const *m)
{
        struct cmd c = { .m = m };
        struct sockaddr_storage l, r;
        long long token = 0, id = 0, lid = 0, rid = 0, backup = 0, flags = 0, ifindex = 0;
        char const *const *known = NULL;
        int rc;
        struct mptcpd_pm *pm = B.pm;
        char const *op = m->op;

        for (size_t i = 0; i < L_ARRAY_SIZE(OPS); i++)
                if (strcmp(op, OPS[i].name) == 0)
                        known = OPS[i].known;
        if (known == NULL) {
                snprintf(c.err, sizeof(c.err), "mptcpd bridge: unknown op '%s'", op);
                reply(m->request_id, false, NULL, c.err);
                return;
        }
        char const *bad = unknown_arg(m, known);
        if (bad) {
                snprintf(c.err, sizeof(c.err), "%s: unknown argument %s", op, bad);
                reply(m->request_id, false, NULL, c.err);
                return;
        }
        if (strcmp(op, "bridge.ping") == 0) {
                reply(m->request_id, true, NULL, NULL);
                return;
        }
        if (!mptcpd_pm_ready(pm)) {
                reply(m->request_id, false, NULL,
                      "mptcpd is not ready (no MPTCP generic netlink family yet)");
                return;
        }

        if (strncmp(op, "pm.", 3) == 0 && !int_arg(&c, "token", 0, TOKEN_MAX, true, &token))
                goto bad_args;

        if (strcmp(op, "pm.add_addr") == 0 || strcmp(op, "pm.remove_addr") == 0) {
                if (!sa_arg(&c, "addr", "port", false, &l) || !int_arg(&c, "id", 1, 255, true, &id))
                        goto bad_args;
                if (op[3] == 'a') {
                        rc = mptcpd_pm_add_addr(pm, (struct sockaddr *) &l, (mptcpd_aid_t) id,
                                                (mptcpd_token_t) token);
                        if (rc == 0) {  /* mptcpd may have picked the port (its listener) */
                                char v[48];
                                unsigned int port = l.ss_family == AF_INET
                                        ? ntohs(((struct sockaddr_in *) &l)->sin_port)
                                        : ntohs(((struct sockaddr_in6 *) &l)->sin6_port);
                                snprintf(v, sizeof(v), "{\"port\":%u}", port);
                                reply(m->request_id, true, v, NULL);
                                return;
                        }
                } else {
                        rc = mptcpd_pm_remove_addr(pm, (struct sockaddr *) &l, (mptcpd_aid_t) id,
                                                   (mptcpd_token_t) token);
                }
        } else if (strcmp(op, "pm.add_subflow") == 0) {
                if (!int_arg(&c, "local_id", 0, 255, false, &lid)
                    || !int_arg(&c, "remote_id", 0, 255, false, &rid)
                    || !sa_arg(&c, "laddr", "lport", false, &l)
                    || !sa_arg(&c, "raddr", "rport", true, &r)
                    || !int_arg(&c, "backup", 0, 1, false, &backup))
                        goto bad_args;
                rc = mptcpd_pm_add_subflow(pm, (mptcpd_token_t) token, (mptcpd_aid_t) lid,
                                           (mptcpd_aid_t) rid, (struct sockaddr *) &l,
                                           (struct sockaddr *) &r, backup != 0);
        } else if (strcmp(op, "pm.remove_subflow") == 0 || strcmp(op, "pm.set_backup") == 0) {
                bool set = op[3] == 's';
                if (!sa_arg(&c, "laddr", "lport", true, &l) || !sa_arg(&c, "raddr", "rport", true, &r)
                    || (set && !int_arg(&c, "backup", 0, 1, true, &backup)))
                        goto bad_args;
                rc = set ? mptcpd_pm_set_backup(pm, (mptcpd_token_t) token, (struct sockaddr *) &l,
                                                (struct sockaddr *) &r, backup != 0)
                         : mptcpd_pm_remove_subflow(pm, (mptcpd_token_t) token,
                                                    (struct sockaddr *) &l, (struct sockaddr *) &r);
        } else if (strcmp(op, "kpm.add_addr") == 0) {
                if (!sa_arg(&c, "addr", "port", false, &l) || !int_arg(&c, "id", 0, 255, false, &id)
                    || !int_arg(&c, "flags", 0, 0xFFFF, false, &flags)
                    || !int_arg(&c, "ifindex", 0, 0x7FFFFFFF, false, &ifindex))
                        goto bad_args;
                rc = mptcpd_kpm_add_addr(pm, (struct sockaddr *) &l, (mptcpd_aid_t) id,
                                         (mptcpd_flags_t) flags, (int) ifindex);
        } else if (strcmp(op, "kpm.remove_addr") == 0) {
                if (!int_arg(&c, "id", 1, 255, true, &id))
                        goto bad_args;
                rc = mptcpd_kpm_remove_addr(pm, (mptcpd_aid_t) id);
        } else if (strcmp(op, "kpm.set_flags") == 0) {
                if (!sa_arg(&c, "addr", "port", false, &l)
                    || !int_arg(&c, "flags", 0, 0xFFFF, true, &flags))
                        goto bad_args;
                rc = mptcpd_kpm_set_flags(pm, (struct sockaddr *) &l, (mptcpd_flags_t) flags);
        } else if (strcmp(op, "kpm.flush_addrs") == 0) {
                rc = mptcpd_kpm_flush_addrs(pm);
        } else if (strcmp(op, "kpm.set_limits") == 0) {
                struct mptcpd_limit lim[2];
                size_t n = 0;
                long long v = -1;
                if (!int_arg(&c, "subflows", 0, 0xFFFFFFFFLL, false, &v))
                        goto bad_args;
                if (v >= 0)
                        lim[n++] = (struct mptcpd_limit) { MPTCPD_LIMIT_SUBFLOWS, (uint32_t) v };
                v = -1;
                if (!int_arg(&c, "add_addr_accepted", 0, 0xFFFFFFFFLL, false, &v))
                        goto bad_args;
                if (v >= 0)
                        lim[n++] = (struct mptcpd_limit) { MPTCPD_LIMIT_RCV_ADD_ADDRS, (uint32_t) v };
                rc = n ? mptcpd_kpm_set_limits(pm, lim, n) : 0;
        } else {  /* the three async reads */
                bool dump = strcmp(op, "kpm.dump_addrs") == 0;
                bool limits = strcmp(op, "kpm.get_limits") == 0;
                if (!dump && !limits && !int_arg(&c, "id", 1, 255, true, &id))
                        goto bad_args;
                struct pending *p = new_pending(&c, dump);
                if (p == NULL) {
                        reply_rc(&c, ENOMEM);
                        return;
                }
                if (limits)  /* mptcpd never calls back if the kernel refuses: p is lost */
                        rc = mptcpd_kpm_get_limits(pm, on_limits, p);
                else if (dump)
                        rc = mptcpd_kpm_dump_addrs(pm, on_addr, p, on_addr_done);
                else
                        rc = mptcpd_kpm_get_addr(pm, (mptcpd_aid_t) id, on_addr, p, on_addr_done);
                if (rc != 0) {
                        if (!limits)
                                p->generation = B.generation - 1;  /* complete may still run */
                        else
                                free(p);
                        reply_rc(&c, rc);
                }
                return;
        }
        reply_rc(&c, rc);
        return;

bad_args:
        {
                char err[260];
                snprintf(err, sizeof(err), "%s: %s", op, c.err);
                reply(m->request_id, false, NULL, err);
        }
}

/* ----------------------------------------------------------- connection */

static void handle_line(char const *line, size_t len)
{
        struct msg m;
        if (len == 0)
                return;
        if (!parse_msg(line, len, &m)) {
                schedule_close("the gateway sent a line that is not a message this bridge reads");
                return;
        }
        if (B.state == HELLO_SENT) {
                if (strcmp(m.type, "welcome") == 0) {
                        B.state = READY;
                        l_info(PLUGIN_NAME ": connected to the ipcgw gateway at %s", B.where);
                        return;
                }
                if (strcmp(m.type, "error") == 0)
                        l_error(PLUGIN_NAME ": the gateway refused us: %s", m.reason);
                schedule_close("no Welcome from the gateway");
                return;
        }
        if (strcmp(m.type, "command") == 0) {
                run_command(&m);
        } else if (strcmp(m.type, "error") == 0) {
                l_warn(PLUGIN_NAME ": gateway error: %s", m.reason);
        } else if (strcmp(m.type, "bye") == 0) {
                schedule_close("the gateway said bye");
        }  /* anything else (a Pong, say) is ignored */
}

static bool on_readable(struct l_io *io, void *data)
{
        (void) data;
        int fd = l_io_get_fd(io);
        for (;;) {
                if (B.closing)
                        return true;
                if (B.in_len == sizeof(B.in)) {
                        schedule_close("a line from the gateway is longer than 64 KiB");
                        return true;
                }
                ssize_t n = recv(fd, B.in + B.in_len, sizeof(B.in) - B.in_len, MSG_DONTWAIT);
                if (n == 0) {
                        schedule_close("the gateway closed the connection");
                        return true;
                }
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN && errno != EWOULDBLOCK)
                                schedule_close("read from the gateway failed");
                        return true;
                }
                size_t scanned = B.in_len, start = 0;
                B.in_len += (size_t) n;
                for (size_t i = scanned; i < B.in_len && !B.closing; i++) {
                        if (B.in[i] == '\n') {
                                handle_line(B.in + start, i - start);
                                start = i + 1;
                        }
                }
                if (B.closing)
                        return true;
                memmove(B.in, B.in + start, B.in_len - start);
                B.in_len -= start;
        }
}

static void try_connect(struct l_timeout *t, void *data);

static void arm_retry(void)
{
        if (B.retry)
                l_timeout_modify(B.retry, RETRY_SECONDS);
        else
                B.retry = l_timeout_create(RETRY_SECONDS, try_connect, NULL, NULL);
}

static void do_close(void *data)
{
        (void) data;
        if (B.io) {
                l_io_destroy(B.io);  /* closes the fd */
                B.io = NULL;
        }
        B.fd = -1;
        B.state = DOWN;
        B.closing = false;
        B.in_len = B.out_len = 0;
        arm_retry();
}

/* Never tear the l_io down from inside its own callback: an idle does it. */
static void schedule_close(char const *why)
{
        if (B.closing || B.fd < 0)
                return;
        l_warn(PLUGIN_NAME ": %s; reconnecting to %s", why, B.where);
        B.closing = true;
        B.generation++;
        shutdown(B.fd, SHUT_RDWR);
        if (!l_idle_oneshot(do_close, NULL, NULL))
                do_close(NULL);
}

static void on_disconnect(struct l_io *io, void *data)
{
        (void) io;
        (void) data;
        schedule_close("the gateway went away");
}

static void try_connect(struct l_timeout *t, void *data)
{
        (void) t;
        (void) data;
        if (B.fd >= 0)
                return;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *) &B.sun, B.sun_len) < 0) {
                int e = errno;
                if (e != B.last_errno)
                        l_info(PLUGIN_NAME ": no gateway at %s yet (%s); retrying every %d s",
                               B.where, strerror(e), RETRY_SECONDS);
                B.last_errno = e;
                if (fd >= 0)
                        close(fd);
                arm_retry();
                return;
        }
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred)
            || cred.uid != B.want_uid) {
                if (B.last_errno != -1)
                        l_error(PLUGIN_NAME ": refusing the gateway at %s: it runs as uid %d, "
                                "not the configured uid %u (IPCGW_BRIDGE_UID)", B.where,
                                len == sizeof(cred) ? (int) cred.uid : -1, (unsigned int) B.want_uid);
                B.last_errno = -1;
                close(fd);
                arm_retry();
                return;
        }
        B.last_errno = 0;
        B.fd = fd;
        B.io = l_io_new(fd);
        if (B.io == NULL) {
                close(fd);
                B.fd = -1;
                arm_retry();
                return;
        }
        l_io_set_close_on_destroy(B.io, true);
        l_io_set_read_handler(B.io, on_readable, NULL, NULL);
        l_io_set_disconnect_handler(B.io, on_disconnect, NULL, NULL);
        B.generation++;
        B.state = HELLO_SENT;
        char text[512];
        struct buf b = { text, 0, sizeof(text), false };
        put(&b, "{\"type\":\"hello\",\"version\":1,\"framing\":\"delimited:lf\",\"codec\":\"json\","
            "\"name\":");
        put_str(&b, B.name);
        put(&b, ",\"token\":");
        put_str(&b, B.token);
        put(&b, "}");
        send_line(&b);
}

/* --------------------------------------------------------------- events */

static void event(char const *kind, mptcpd_token_t token, struct sockaddr const *laddr,
                  struct sockaddr const *raddr, char const *extra_key, int extra)
{
        char text[1024];
        struct buf b = { text, 0, sizeof(text), false };
        struct timespec ts;
        if (B.state != READY) {
                B.dropped++;
                return;
        }
        clock_gettime(CLOCK_REALTIME, &ts);
        put(&b, UP_OPEN "event\",\"args\":{\"kind\":\"%s\",\"attrs\":{\"token\":%u", kind,
            (unsigned int) token);
        struct sockaddr const *any = laddr ? laddr : raddr;
        if (any && (any->sa_family == AF_INET || any->sa_family == AF_INET6))
                put(&b, ",\"family\":%d", any->sa_family);
        put_addr(&b, 's', laddr);
        put_addr(&b, 'd', raddr);
        if (extra_key)
                put(&b, ",\"%s\":%d", extra_key, extra);
        put(&b, "},\"time\":%lld.%06ld}}", (long long) ts.tv_sec, ts.tv_nsec / 1000);
        send_line(&b);
}

/*
 * BACKUP_IS_ALWAYS_TRUE: mptcpd (0.12 at least) hands its plugins the
 * *pointer* to the kernel's MPTCP_ATTR_BACKUP attribute as the bool, so
 * "backup" is true for every subflow event that has the attribute (all of
 * them). Better no backup attribute than a wrong one: it is left out.
 */
static void on_new_connection(mptcpd_token_t token, struct sockaddr const *laddr,
                              struct sockaddr const *raddr, bool server_side,
                              struct mptcpd_pm *pm)
{
        (void) pm;
        event("CREATED", token, laddr, raddr, "server_side", server_side);
}

static void on_established(mptcpd_token_t token, struct sockaddr const *laddr,
                           struct sockaddr const *raddr, bool server_side, struct mptcpd_pm *pm)
{
        (void) pm;
        event("ESTABLISHED", token, laddr, raddr, "server_side", server_side);
}

static void on_closed(mptcpd_token_t token, struct mptcpd_pm *pm)
{
        (void) pm;
        event("CLOSED", token, NULL, NULL, NULL, 0);
}

static void on_new_address(mptcpd_token_t token, mptcpd_aid_t id, struct sockaddr const *addr,
                           struct mptcpd_pm *pm)
{
        (void) pm;
        event("ANNOUNCED", token, NULL, addr, "rem_id", id);
}

static void on_address_removed(mptcpd_token_t token, mptcpd_aid_t id, struct mptcpd_pm *pm)
{
        (void) pm;
        event("REMOVED", token, NULL, NULL, "rem_id", id);
}

static void on_new_subflow(mptcpd_token_t token, struct sockaddr const *laddr,
                           struct sockaddr const *raddr, bool backup, struct mptcpd_pm *pm)
{
        (void) pm;
        (void) backup;  /* see BACKUP_IS_ALWAYS_TRUE */
        event("SUB_ESTABLISHED", token, laddr, raddr, NULL, 0);
}

static void on_subflow_closed(mptcpd_token_t token, struct sockaddr const *laddr,
                              struct sockaddr const *raddr, bool backup, struct mptcpd_pm *pm)
{
        (void) pm;
        (void) backup;  /* see BACKUP_IS_ALWAYS_TRUE */
        event("SUB_CLOSED", token, laddr, raddr, NULL, 0);
}

static void on_subflow_priority(mptcpd_token_t token, struct sockaddr const *laddr,
                                struct sockaddr const *raddr, bool backup, struct mptcpd_pm *pm)
{
        (void) pm;
        (void) backup;  /* see BACKUP_IS_ALWAYS_TRUE */
        event("SUB_PRIORITY", token, laddr, raddr, NULL, 0);
}

static struct mptcpd_plugin_ops const ops = {
        .new_connection = on_new_connection,
        .connection_established = on_established,
        .connection_closed = on_closed,
        .new_address = on_new_address,
        .address_removed = on_address_removed,
        .new_subflow = on_new_subflow,
        .subflow_closed = on_subflow_closed,
        .subflow_priority = on_subflow_priority,
};

/* ------------------------------------------------------- configuration */

static bool configure(void)
{
        char const *url = getenv("IPCGW_BRIDGE_URL");
        char const *uid = getenv("IPCGW_BRIDGE_UID");
        char const *token = getenv("IPCGW_BRIDGE_TOKEN");
        char const *name = getenv("IPCGW_BRIDGE_NAME");
        char path[sizeof(B.sun.sun_path) + 1];
        bool abstract = false;

        if (url == NULL || !*url)
                url = DEFAULT_URL;
        if (strncmp(url, "unix://", 7) == 0) {
                url += 7;
        } else if (strncmp(url, "unix:@", 6) == 0) {
                url += 6;
                abstract = true;
        } else if (url[0] != '/') {
                l_error(PLUGIN_NAME ": IPCGW_BRIDGE_URL must be unix:///path, unix:@name or /path");
                return false;
        }
        size_t n = strcspn(url, "?");
        if (n == 0 || n >= sizeof(B.sun.sun_path) - 1 || (!abstract && url[0] != '/')) {
                l_error(PLUGIN_NAME ": IPCGW_BRIDGE_URL: socket path empty, relative or longer "
                        "than %zu bytes", sizeof(B.sun.sun_path) - 2);
                return false;
        }
        if (url[n] == '?' && (!strstr(url + n, "codec=json")
                              || !strstr(url + n, "framing=delimited:lf"))) {
                l_error(PLUGIN_NAME ": the bridge speaks codec=json&framing=delimited:lf only");
                return false;
        }
        memcpy(path, url, n);
        path[n] = '\0';
        memset(&B.sun, 0, sizeof(B.sun));
        B.sun.sun_family = AF_UNIX;
        memcpy(B.sun.sun_path + (abstract ? 1 : 0), path, n);
        B.sun_len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n + 1);  /* abstract: leading NUL; path: trailing NUL */
        snprintf(B.where, sizeof(B.where), "%s%s", abstract ? "@" : "", path);

        B.want_uid = geteuid();
        if (uid && *uid) {
                char *end;
                errno = 0;
                unsigned long v = strtoul(uid, &end, 10);
                if (errno || *end || v > 0xFFFFFFFEUL || uid[0] == '-') {
                        l_error(PLUGIN_NAME ": IPCGW_BRIDGE_UID must be a uid, got '%s'", uid);
                        return false;
                }
                B.want_uid = (uid_t) v;
        }
        struct { char const *value; char *dst; size_t cap; char const *what; } strs[] = {
                { token, B.token, sizeof(B.token), "IPCGW_BRIDGE_TOKEN" },
                { name ? name : "mptcpd-bridge", B.name, sizeof(B.name), "IPCGW_BRIDGE_NAME" },
        };
        for (size_t i = 0; i < L_ARRAY_SIZE(strs); i++) {
                char const *s = strs[i].value ? strs[i].value : "";
                if (strlen(s) >= strs[i].cap || strpbrk(s, "\"\\")) {
                        l_error(PLUGIN_NAME ": %s too long or has a quote/backslash", strs[i].what);
                        return false;
                }
                for (char const *q = s; *q; q++)
                        if ((unsigned char) *q < 0x20 || (unsigned char) *q >= 0x7f) {
                                l_error(PLUGIN_NAME ": %s must be printable ASCII", strs[i].what);
                                return false;
                        }
                snprintf(strs[i].dst, strs[i].cap, "%s", s);
        }
        return true;
}

static int bridge_init(struct mptcpd_pm *pm)
{
        B.pm = pm;
        B.fd = -1;
        if (!configure())
                return -1;
        if (!mptcpd_plugin_register_ops(PLUGIN_NAME, &ops)) {
                l_error(PLUGIN_NAME ": cannot register the plugin's operations");
                return -1;
        }
        l_info(PLUGIN_NAME ": bridging to the ipcgw gateway at %s (gateway uid %u)", B.where,
               (unsigned int) B.want_uid);
        try_connect(NULL, NULL);
        return 0;
}

static void bridge_exit(struct mptcpd_pm *pm)
{
        (void) pm;
        if (B.retry) {
                l_timeout_remove(B.retry);
                B.retry = NULL;
        }
        if (B.io) {
                l_io_destroy(B.io);
                B.io = NULL;
        }
        B.fd = -1;
        if (B.dropped)
                l_info(PLUGIN_NAME ": %lu events dropped while no gateway was connected", B.dropped);
}

MPTCPD_PLUGIN_DEFINE(ipcgw-bridge, "Bridge to an ipcgw gateway", MPTCPD_PLUGIN_PRIORITY_DEFAULT,
                     bridge_init, bridge_exit)
