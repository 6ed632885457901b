/* pmlb benchmark: an epoll load generator and a plain echo server, single-threaded.
 *
 * Compiled at bench time by tools/bench/run.py (gcc -O2); never committed
 * as a binary. Every mode prints one JSON object per result line on stdout.
 *
 *   loadgen echo  PORT                       a plain epoll echo server (the baseline)
 *   loadgen wsecho PORT                      the same speaking WebSocket: answers the
 *                                            upgrade, echoes each frame's payload in an
 *                                            unmasked frame (HAProxy's backend for ws)
 *   loadgen load  PORT C D S SECONDS RATE [PROTO [WARMUP]]
 *                                            C connections, D messages in flight each,
 *                                            S-byte lines; RATE > 0 caps the total
 *                                            messages/s (open loop at that offered rate);
 *                                            PROTO: tcp (default), tls, ws or wss;
 *                                            WARMUP seconds of load before "go"
 *                                            (default 0), left out of every figure
 *   loadgen hold  PORT N SRC BCAST_LEN       hold N idle connections from source
 *                                            address SRC; print "CONNECTED"; with
 *                                            BCAST_LEN > 0 wait for one line of that
 *                                            length on each and print when the last came
 *   loadgen send  PORT LINE                  send LINE, print the send time, wait for echo
 *   loadgen accept PORT SECONDS PAR SRC      connect and close as fast as possible
 *
 * Every message in load mode is "<conn> <seq> xxx...\n": each echo is checked
 * byte for byte, in order. Latency is from the write of a message to the
 * read of its echo. Sockets are closed with SO_LINGER 0 so that repeated runs
 * leave no TIME_WAIT behind to eat the ephemeral ports.
 *
 * With PROTO tls, each connection does a TLS handshake (OpenSSL, no
 * certificate check: the servers use a throwaway self-signed one) before
 * "go"; with ws, an HTTP upgrade to WebSocket on path /, then every message
 * is one masked text frame and every echo must come back as one unmasked
 * frame carrying the same line; wss is both. Handshakes are blocking and
 * done before "go", so the measured window holds messages only. Built with
 * -DNO_TLS (no OpenSSL headers), tls and wss are refused.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifndef NO_TLS
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#else
typedef struct ssl_st SSL;
#endif

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void hard_close(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static int connect_to(int port, const char *src, int nonblock) {
    int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (src && *src) {
        struct sockaddr_in local = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &local.sin_addr);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
            close(fd);
            return -1;
        }
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* -- echo server ------------------------------------------------------ */

/* A non-blocking listener on 127.0.0.1:port; prints "LISTENING <port>". */
static int open_listener(int port) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, 4096) < 0) die("listen");
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    printf("LISTENING %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    return lfd;
}

/* Blocking retry on a full socket buffer: enough for a baseline server. */
static void write_all(int fd, const char *buf, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, buf + off, n - off);
        if (w < 0) {
            if (errno == EAGAIN) {
                struct pollfd p = {fd, POLLOUT, 0};
                poll(&p, 1, 1000);
                continue;
            }
            return;
        }
        off += w;
    }
}

static __attribute__((noreturn)) void echo_server(int port) {
    int lfd = open_listener(port);
    int one = 1;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static char buf[65536];
    struct epoll_event events[512];
    for (;;) {
        int n = epoll_wait(ep, events, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) {
                close(fd);
                continue;
            }
            /* Small echoes always fit the socket buffer. */
            write_all(fd, buf, (size_t)r);
        }
    }
}

/* -- WebSocket echo server ----------------------------------------------- */

#ifndef NO_TLS
typedef struct {
    int upgraded;
    size_t len;
    unsigned char buf[65536 + 16];
} wsconn_t;

/* The 101 answer to the request head in c->buf (NUL-terminated); 0 if none. */
static int ws_accept(int fd, wsconn_t *c) {
    const char *key = strcasestr((char *)c->buf, "\r\nSec-WebSocket-Key:");
    if (!key) return 0;
    key += strlen("\r\nSec-WebSocket-Key:");
    while (*key == ' ') key++;
    size_t klen = strcspn(key, "\r\n ");
    char joined[256];
    int n = snprintf(joined, sizeof joined, "%.*s258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
                     (int)klen, key);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((unsigned char *)joined, (size_t)n, digest);
    unsigned char accept[64];
    EVP_EncodeBlock(accept, digest, SHA_DIGEST_LENGTH);
    char resp[256];
    n = snprintf(resp, sizeof resp,
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                 accept);
    write_all(fd, resp, (size_t)n);
    return 1;
}

/* Echo every whole frame in c->buf, unmasked; -1 on a close frame or garbage. */
static int ws_echo_frames(int fd, wsconn_t *c) {
    static char out[sizeof c->buf + 16];
    size_t off = 0, olen = 0;
    int rc = 0;
    while (c->len - off >= 2) {
        unsigned char *f = c->buf + off;
        int opcode = f[0] & 0x0f, masked = f[1] & 0x80;
        size_t plen = f[1] & 0x7f, h = 2;
        if (plen == 126) {
            if (c->len - off < 4) break;
            plen = (size_t)f[2] << 8 | f[3];
            h = 4;
        } else if (plen == 127) {
            rc = -1; /* no 64-bit lengths here */
            break;
        }
        size_t mh = h + (masked ? 4 : 0);
        if (c->len - off < mh + plen) break;
        if (opcode == 0x8) {
            rc = -1;
            break;
        }
        unsigned char *payload = f + mh;
        if (masked)
            for (size_t i = 0; i < plen; i++) payload[i] ^= f[h + (i & 3)];
        if (opcode == 0x1 || opcode == 0x2 || opcode == 0x9) {
            out[olen] = (char)(0x80 | (opcode == 0x9 ? 0xa : opcode)); /* a ping gets its pong */
            if (plen < 126) {
                out[olen + 1] = (char)plen;
                olen += 2;
            } else {
                out[olen + 1] = 126;
                out[olen + 2] = (char)(plen >> 8);
                out[olen + 3] = (char)plen;
                olen += 4;
            }
            memcpy(out + olen, payload, plen);
            olen += plen;
        }
        off += mh + plen;
    }
    if (olen) write_all(fd, out, olen);
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    if (c->len >= sizeof c->buf - 1) rc = -1; /* a frame larger than the buffer */
    return rc;
}

static __attribute__((noreturn)) void ws_echo_server(int port) {
    int lfd = open_listener(port);
    int one = 1;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static wsconn_t *conns[1 << 16];
    struct epoll_event events[512];
    for (;;) {
        int n = epoll_wait(ep, events, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= (1 << 16)) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    if (!conns[c]) conns[c] = malloc(sizeof(wsconn_t));
                    conns[c]->upgraded = 0;
                    conns[c]->len = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            wsconn_t *c = conns[fd];
            ssize_t r = read(fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close(fd);
                continue;
            }
            c->len += r;
            if (!c->upgraded) {
                c->buf[c->len] = 0;
                char *end = strstr((char *)c->buf, "\r\n\r\n");
                if (!end) {
                    if (c->len >= sizeof c->buf - 1) close(fd);
                    continue;
                }
                if (!ws_accept(fd, c)) {
                    close(fd);
                    continue;
                }
                c->upgraded = 1;
                size_t head = (size_t)(end + 4 - (char *)c->buf);
                memmove(c->buf, c->buf + head, c->len - head);
                c->len -= head;
            }
            if (ws_echo_frames(fd, c) < 0) close(fd);
        }
    }
}
#endif

/* -- load --------------------------------------------------------------- */

typedef struct {
    int fd;
    SSL *ssl; /* NULL: plain TCP */
    int id;
    uint32_t sent, received;
    int inflight;
    int64_t *stamps; /* ring of D send times */
    char *rbuf;
    size_t rlen;
    char *wbuf;
    size_t wlen;
} conn_t;

static int S, D;
static int WS;          /* 1: WebSocket frames around every message */
static int SEND_LEN;    /* bytes on the wire per message sent: S, or S in a masked frame */
static int RECV_LEN;    /* bytes on the wire per echo: S, or S in an unmasked frame */
static const unsigned char MASK[4] = {0x5a, 0xc3, 0x17, 0x8e};

static void make_msg(char *out, int id, uint32_t seq) {
    int n = snprintf(out, S, "%d %u ", id, seq);
    memset(out + n, 'x', S - 1 - n);
    out[S - 1] = '\n';
}

/* The WebSocket frame header of an S-byte payload: 2 bytes below 126, else 4. */
static int ws_header(unsigned char *out, int masked) {
    out[0] = 0x81; /* FIN, text */
    if (S < 126) {
        out[1] = (unsigned char)(S | (masked ? 0x80 : 0));
        return 2;
    }
    out[1] = (unsigned char)(126 | (masked ? 0x80 : 0));
    out[2] = (unsigned char)(S >> 8);
    out[3] = (unsigned char)S;
    return 4;
}

/* read()/write() or their TLS counterparts; -1 with errno EAGAIN when the
 * call would block, 0 on the peer's close. */
static ssize_t io_read(conn_t *c, char *buf, size_t len) {
#ifndef NO_TLS
    if (c->ssl) {
        int r = SSL_read(c->ssl, buf, (int)len);
        if (r > 0) return r;
        int err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            errno = EAGAIN;
            return -1;
        }
        if (err == SSL_ERROR_ZERO_RETURN) return 0;
        errno = EIO;
        return -1;
    }
#endif
    return read(c->fd, buf, len);
}

static ssize_t io_write(conn_t *c, const char *buf, size_t len) {
#ifndef NO_TLS
    if (c->ssl) {
        int r = SSL_write(c->ssl, buf, (int)len);
        if (r > 0) return r;
        int err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            errno = EAGAIN;
            return -1;
        }
        errno = EIO;
        return -1;
    }
#endif
    return write(c->fd, buf, len);
}

/* Blocking: send the upgrade request, read the response head, want 101. */
static int ws_upgrade(conn_t *c, int port) {
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     port);
    for (int off = 0; off < n;) {
        ssize_t w = io_write(c, req + off, n - off);
        if (w <= 0) return -1;
        off += w;
    }
    char head[2048];
    size_t got = 0;
    /* the server sends nothing after its 101 until the client does */
    while (got < sizeof head - 1) {
        ssize_t r = io_read(c, head + got, sizeof head - 1 - got);
        if (r <= 0) return -1;
        got += r;
        head[got] = 0;
        if (strstr(head, "\r\n\r\n")) break;
    }
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "WebSocket upgrade refused: %.80s\n", head);
        return -1;
    }
    return 0;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void queue_send(conn_t *c, int64_t t) {
    if (WS) {
        unsigned char *out = (unsigned char *)c->wbuf + c->wlen;
        int h = ws_header(out, 1);
        memcpy(out + h, MASK, 4);
        make_msg((char *)out + h + 4, c->id, c->sent);
        for (int i = 0; i < S; i++) out[h + 4 + i] ^= MASK[i & 3];
    } else {
        make_msg(c->wbuf + c->wlen, c->id, c->sent);
    }
    c->wlen += SEND_LEN;
    c->stamps[c->sent % D] = t;
    c->sent++;
    c->inflight++;
}

static int flush(conn_t *c) {
    while (c->wlen) {
        ssize_t w = io_write(c, c->wbuf, c->wlen);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        memmove(c->wbuf, c->wbuf + w, c->wlen - w);
        c->wlen -= w;
    }
    return 0;
}

static int load(int port, int C, int depth, int size, double seconds, double rate,
                const char *proto, double warmup) {
    S = size;
    D = depth;
    if (S < 24) S = 24;
    int tls = !strcmp(proto, "tls") || !strcmp(proto, "wss");
    WS = !strcmp(proto, "ws") || !strcmp(proto, "wss");
    if (!tls && !WS && strcmp(proto, "tcp")) {
        fprintf(stderr, "unknown protocol %s (tcp, tls, ws or wss)\n", proto);
        return 2;
    }
    unsigned char hdr[4];
    SEND_LEN = WS ? ws_header(hdr, 1) + 4 + S : S;
    RECV_LEN = WS ? ws_header(hdr, 0) + S : S;
#ifdef NO_TLS
    if (tls) {
        fprintf(stderr, "built without OpenSSL: no %s\n", proto);
        return 2;
    }
#else
    SSL_CTX *ctx = NULL;
    if (tls) {
        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx) die("SSL_CTX_new");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
#endif
    const char *negotiated = "";
    conn_t *conns = calloc(C, sizeof *conns);
    int ep = epoll_create1(0);
    for (int i = 0; i < C; i++) {
        conn_t *c = &conns[i];
        c->id = i;
        c->fd = connect_to(port, NULL, 0);
        if (c->fd < 0) die("connect");
#ifndef NO_TLS
        if (tls) {
            c->ssl = SSL_new(ctx);
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_tlsext_host_name(c->ssl, "localhost");
            if (SSL_connect(c->ssl) != 1) {
                ERR_print_errors_fp(stderr);
                fprintf(stderr, "connection %d: TLS handshake failed\n", i);
                exit(2);
            }
            if (i == 0) negotiated = SSL_get_cipher_name(c->ssl);
        }
#endif
        if (WS && ws_upgrade(c, port) < 0) {
            fprintf(stderr, "connection %d: no WebSocket\n", i);
            exit(2);
        }
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        c->stamps = calloc(D, sizeof(int64_t));
        c->rbuf = malloc((size_t)RECV_LEN * (D + 1) + 65536);
        c->wbuf = malloc((size_t)SEND_LEN * (D + 1));
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    size_t cap = 1 << 20, nlat = 0;
    uint32_t *lat = malloc(cap * sizeof *lat);
    char *expect = malloc(S);
    uint64_t errors = 0, done = 0, total_sent = 0;
    /* With a warm-up, the loop first runs WARMUP seconds unmeasured: "go",
     * the window and every count start when it ends (see below). */
    int measuring = warmup <= 0;
    if (measuring) {
        printf("{\"event\": \"go\"}\n");
        fflush(stdout);
    }
    double cpu0 = cpu_seconds();
    int64_t t0 = now_ns();
    int64_t end = t0 + (int64_t)(((measuring ? 0 : warmup) + seconds) * 1e9);
    int64_t warm_end = t0 + (int64_t)((measuring ? 0 : warmup) * 1e9);
    uint32_t *base = calloc(C, sizeof *base); /* echoes per connection before "go" */
    int next = 0;
    if (rate <= 0) {
        for (int i = 0; i < C; i++) {
            for (int k = 0; k < D; k++) queue_send(&conns[i], t0);
            if (flush(&conns[i]) < 0) errors++;
        }
    }
    struct epoll_event events[1024];
    int64_t now = t0;
    while (now < end) {
        if (!measuring && now >= warm_end) {
            measuring = 1;
            printf("{\"event\": \"go\"}\n");
            fflush(stdout);
            cpu0 = cpu_seconds();
            t0 = now; /* the offered rate's count restarts with the window */
            total_sent = 0;
            nlat = 0;
            done = 0;
            for (int i = 0; i < C; i++) base[i] = conns[i].received;
        }
        if (rate > 0) {
            /* open loop: send what the offered rate allows by now */
            int64_t allowed = (int64_t)((now - t0) / 1e9 * rate) + 1;
            int tries = 0;
            while ((int64_t)total_sent < allowed && tries < C) {
                conn_t *c = &conns[next];
                next = (next + 1) % C;
                if (c->inflight < D) {
                    queue_send(c, now);
                    total_sent++;
                    if (flush(c) < 0) errors++;
                    tries = 0;
                } else {
                    tries++;
                }
            }
        }
        int n = epoll_wait(ep, events, 1024, rate > 0 ? 1 : 100);
        now = now_ns();
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (events[i].events & EPOLLOUT) {
                if (flush(c) < 0) errors++;
                if (!c->wlen) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (!(events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            size_t room = (size_t)RECV_LEN * (D + 1) + 65536;
            ssize_t r = io_read(c, c->rbuf + c->rlen, room - c->rlen);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                fprintf(stderr, "connection %d closed by the server\n", c->id);
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            c->rlen += r;
#ifndef NO_TLS
            /* decrypted bytes OpenSSL holds do not wake epoll: take them now */
            while (c->ssl && SSL_pending(c->ssl) > 0 && c->rlen < room) {
                r = io_read(c, c->rbuf + c->rlen, room - c->rlen);
                if (r <= 0) break;
                c->rlen += r;
            }
#endif
            size_t off = 0;
            while (c->rlen - off >= (size_t)RECV_LEN) {
                make_msg(expect, c->id, c->received);
                const char *got = c->rbuf + off;
                if (WS) {
                    /* one unmasked text or binary frame of S bytes */
                    unsigned char want[4], first = (unsigned char)got[0];
                    int h = ws_header(want, 0);
                    if ((first != 0x81 && first != 0x82) || memcmp(want + 1, got + 1, h - 1)) {
                        fprintf(stderr, "connection %d: not a %d-byte frame: %02x %02x\n", c->id,
                                S, (unsigned char)got[0], (unsigned char)got[1]);
                        errors++;
                        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                        c->rlen = 0;
                        off = 0;
                        break;
                    }
                    got += h;
                }
                if (memcmp(expect, got, S) != 0) {
                    if (errors < 5)
                        fprintf(stderr, "connection %d: bad echo of message %u\n", c->id,
                                c->received);
                    errors++;
                }
                int64_t l = (now - c->stamps[c->received % D]) / 1000;
                if (nlat == cap) {
                    cap *= 2;
                    lat = realloc(lat, cap * sizeof *lat);
                }
                lat[nlat++] = l > 0xffffffffLL ? 0xffffffffU : (uint32_t)l;
                c->received++;
                c->inflight--;
                done++;
                off += RECV_LEN;
                if (rate <= 0) queue_send(c, now);
            }
            memmove(c->rbuf, c->rbuf + off, c->rlen - off);
            c->rlen -= off;
            if (c->wlen) {
                if (flush(c) < 0) errors++;
                if (c->wlen) {
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
    }
    if (!measuring) { /* the warm-up outlasted the run: an empty window */
        printf("{\"event\": \"go\"}\n");
        fflush(stdout);
        cpu0 = cpu_seconds();
        t0 = now;
        nlat = 0;
        done = 0;
        for (int i = 0; i < C; i++) base[i] = conns[i].received;
    }
    double elapsed = (now - t0) / 1e9;
    double cpu = cpu_seconds() - cpu0;
    printf("{\"event\": \"end\"}\n");
    fflush(stdout);
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    uint32_t p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[nlat * 99 / 100] : 0,
             mx = nlat ? lat[nlat - 1] : 0;
    /* fairness: the echoes of the least and the most served connection */
    uint32_t least = C ? conns[0].received - base[0] : 0, most = least;
    for (int i = 1; i < C; i++) {
        uint32_t got = conns[i].received - base[i];
        if (got < least) least = got;
        if (got > most) most = got;
    }
    printf("{\"event\": \"result\", \"messages\": %llu, \"seconds\": %.3f, \"msgs_per_s\": %.0f, "
           "\"p50_us\": %u, \"p99_us\": %u, \"max_us\": %u, \"cpu_s\": %.3f, \"errors\": %llu, "
           "\"least_served\": %u, \"most_served\": %u, \"proto\": \"%s\", \"cipher\": \"%s\"}\n",
           (unsigned long long)done, elapsed, done / elapsed, p50, p99, mx, cpu,
           (unsigned long long)errors, least, most, proto, negotiated);
    fflush(stdout);
    for (int i = 0; i < C; i++) {
#ifndef NO_TLS
        if (conns[i].ssl) SSL_free(conns[i].ssl);
#endif
        hard_close(conns[i].fd);
    }
    return errors ? 1 : 0;
}

/* -- idle clients and broadcast ------------------------------------------ */

static int hold(int port, int N, const char *src, int bcast_len) {
    int *fds = malloc(N * sizeof(int));
    int *got = calloc(N, sizeof(int));
    int ep = epoll_create1(0);
    int failed = 0, ok = 0;
    /* connect in waves so that the listener's backlog is not overrun */
    for (int i = 0; i < N; i++) {
        fds[i] = connect_to(port, src, 1);
        if (fds[i] < 0) {
            failed++;
            continue;
        }
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        if (i % 256 == 255 || i == N - 1) {
            /* wait until this wave is connected */
            int pending = 1;
            int64_t deadline = now_ns() + 10000000000LL;
            while (pending && now_ns() < deadline) {
                pending = 0;
                for (int k = i - (i % 256); k <= i; k++) {
                    if (fds[k] < 0) continue;
                    struct pollfd p = {fds[k], POLLOUT, 0};
                    if (poll(&p, 1, 0) == 0) pending = 1;
                }
                if (pending) usleep(1000);
            }
        }
    }
    for (int i = 0; i < N; i++) {
        if (fds[i] < 0) continue;
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            failed++;
            close(fds[i]);
            fds[i] = -1;
        } else {
            ok++;
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
            epoll_ctl(ep, EPOLL_CTL_MOD, fds[i], &ev);
        }
    }
    printf("{\"event\": \"connected\", \"ok\": %d, \"failed\": %d}\n", ok, failed);
    fflush(stdout);
    int64_t last = 0;
    int complete = 0, closed = 0;
    struct epoll_event events[1024];
    char buf[4096];
    /* Without a broadcast to wait for: hold until stdin closes. */
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = 0xffffffffU};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
    int reported = 0;
    for (;;) {
        int n = epoll_wait(ep, events, 1024, 1000);
        int64_t t = now_ns();
        if (bcast_len > 0 && complete > 0 && !reported && t - last > 5000000000LL) {
            /* no progress for 5 s: report what arrived */
            printf("{\"event\": \"broadcast\", \"received\": %d, \"last_ns\": %lld}\n",
                   complete, (long long)last);
            fflush(stdout);
            reported = 1;
        }
        for (int e = 0; e < n; e++) {
            uint32_t i = events[e].data.u32;
            if (i == 0xffffffffU) {
                ssize_t r = read(0, buf, sizeof buf);
                if (r <= 0) goto out;
                continue;
            }
            ssize_t r = read(fds[i], buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                closed++;
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                continue;
            }
            if (bcast_len > 0 && got[i] < bcast_len) {
                got[i] += r;
                if (got[i] >= bcast_len) {
                    complete++;
                    last = t;
                    if (complete == ok && !reported) {
                        reported = 1;
                        printf("{\"event\": \"broadcast\", \"received\": %d, \"last_ns\": %lld}\n",
                               complete, (long long)last);
                        fflush(stdout);
                    }
                }
            }
        }
    }
out:
    printf("{\"event\": \"closing\", \"closed_by_server\": %d, \"broadcast_received\": %d}\n",
           closed, complete);
    fflush(stdout);
    for (int i = 0; i < N; i++)
        if (fds[i] >= 0) hard_close(fds[i]);
    return 0;
}

static int send_line(int port, const char *line) {
    int fd = connect_to(port, NULL, 0);
    if (fd < 0) die("connect");
    char msg[4096];
    int len = snprintf(msg, sizeof msg, "%s\n", line);
    int64_t t = now_ns();
    if (write(fd, msg, len) != len) die("write");
    printf("{\"event\": \"sent\", \"sent_ns\": %lld}\n", (long long)t);
    fflush(stdout);
    char buf[4096];
    int got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) break;
        got += r;
    }
    hard_close(fd);
    return got >= len ? 0 : 1;
}

/* -- accept rate ------------------------------------------------------------ */

static int accept_rate(int port, double seconds, int par, const char *src) {
    int ep = epoll_create1(0);
    uint64_t done = 0, failed = 0;
    double cpu0 = cpu_seconds();
    int64_t t0 = now_ns(), end = t0 + (int64_t)(seconds * 1e9);
    int open = 0;
    struct epoll_event events[1024];
    while (now_ns() < end || open) {
        while (now_ns() < end && open < par) {
            int fd = connect_to(port, src, 1);
            if (fd < 0) {
                failed++;
                break;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            open++;
        }
        int n = epoll_wait(ep, events, 1024, 100);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd, err = 0;
            socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) failed++;
            else done++;
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            hard_close(fd);
            open--;
        }
    }
    double elapsed = (now_ns() - t0) / 1e9;
    printf("{\"event\": \"result\", \"connections\": %llu, \"failed\": %llu, \"seconds\": %.3f, "
           "\"per_s\": %.0f, \"cpu_s\": %.3f}\n",
           (unsigned long long)done, (unsigned long long)failed, elapsed, done / elapsed,
           cpu_seconds() - cpu0);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* A write to a connection the peer reset is an error to count (load) or
     * a connection to drop (echo servers), never the end of the process:
     * the echo server died so behind HAProxy once its clients were reset. */
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 3 && !strcmp(argv[1], "echo")) echo_server(atoi(argv[2]));
#ifndef NO_TLS
    if (argc >= 3 && !strcmp(argv[1], "wsecho")) ws_echo_server(atoi(argv[2]));
#endif
    if (argc >= 8 && !strcmp(argv[1], "load"))
        return load(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atof(argv[6]),
                    atof(argv[7]), argc >= 9 ? argv[8] : "tcp", argc >= 10 ? atof(argv[9]) : 0);
    if (argc >= 6 && !strcmp(argv[1], "hold"))
        return hold(atoi(argv[2]), atoi(argv[3]), argv[4], atoi(argv[5]));
    if (argc >= 4 && !strcmp(argv[1], "send")) return send_line(atoi(argv[2]), argv[3]);
    if (argc >= 6 && !strcmp(argv[1], "accept"))
        return accept_rate(atoi(argv[2]), atof(argv[3]), atoi(argv[4]), argv[5]);
    fprintf(stderr, "usage: see the comment at the top of loadgen.c\n");
    return 2;
}
