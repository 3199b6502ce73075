#define _GNU_SOURCE
#include "CHAShims.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The fence runs in a child forked from a multi-threaded process and never execs: it may only
 * call async-signal-safe functions (plain syscalls here), and uses static buffers, no malloc. */

#define FENCE_MAX_ADDRS 16
#define ENFORCE_MS 20
#define REFRESH_MS 300

static struct { char ifname[IFNAMSIZ]; uint32_t ip; int prefix; } g_addrs[FENCE_MAX_ADDRS];
static int g_count, g_lifetime, g_nl = -1;
static uint32_t g_nlseq;
static char g_buf[16384];

static long long mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void say(const char *s) { ssize_t r = write(2, s, strlen(s)); (void)r; }

static int ifindex_of(const char *name) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    int rc = ioctl(s, SIOCGIFINDEX, &ifr);
    close(s);
    return rc < 0 ? -1 : ifr.ifr_ifindex;
}

static int nl_send(struct nlmsghdr *h) {
    struct sockaddr_nl kern;
    memset(&kern, 0, sizeof kern);
    kern.nl_family = AF_NETLINK;
    h->nlmsg_seq = ++g_nlseq;
    while (sendto(g_nl, h, h->nlmsg_len, 0, (struct sockaddr *)&kern, sizeof kern) < 0) {
        if (errno != EINTR) return -errno;
    }
    return 0;
}

/* Sends a request with NLM_F_ACK and returns the kernel's answer (0 or -errno). rtnetlink
 * handles a request inside sendto, so the change is made when this returns. */
static int nl_request(struct nlmsghdr *h) {
    h->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    int rc = nl_send(h);
    if (rc < 0) return rc;
    for (;;) {
        int n = (int)recv(g_nl, g_buf, sizeof g_buf, 0);
        if (n < 0) { if (errno == EINTR) continue; return -errno; }
        for (struct nlmsghdr *r = (struct nlmsghdr *)g_buf; NLMSG_OK(r, n); r = NLMSG_NEXT(r, n)) {
            if (r->nlmsg_seq != h->nlmsg_seq || r->nlmsg_type != NLMSG_ERROR) continue;
            return ((struct nlmsgerr *)NLMSG_DATA(r))->error;
        }
    }
}

struct addr_req { struct nlmsghdr h; struct ifaddrmsg a; char attrs[64]; };

static void add_attr(struct nlmsghdr *h, int type, const void *data, int len) {
    struct rtattr *rta = (struct rtattr *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
    rta->rta_type = (unsigned short)type;
    rta->rta_len = (unsigned short)RTA_LENGTH(len);
    memcpy(RTA_DATA(rta), data, (size_t)len);
    h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(rta->rta_len);
}

static int addr_msg(int type, int flags, int idx, int i, int lifetime) {
    struct addr_req r;
    memset(&r, 0, sizeof r);
    r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
    r.h.nlmsg_type = (unsigned short)type;
    r.h.nlmsg_flags = (unsigned short)flags;
    r.a.ifa_family = AF_INET;
    r.a.ifa_prefixlen = (unsigned char)g_addrs[i].prefix;
    r.a.ifa_index = (unsigned)idx;
    add_attr(&r.h, IFA_LOCAL, &g_addrs[i].ip, 4);
    add_attr(&r.h, IFA_ADDRESS, &g_addrs[i].ip, 4);
    if (lifetime > 0) {
        struct ifa_cacheinfo ci;
        memset(&ci, 0, sizeof ci);
        ci.ifa_prefered = ci.ifa_valid = (uint32_t)lifetime;
        add_attr(&r.h, IFA_CACHEINFO, &ci, sizeof ci);
    }
    return nl_request(&r.h);
}

/* 1 when address i is configured on its interface, 0 when not, -errno on error. */
static int present(int idx, int i) {
    struct { struct nlmsghdr h; struct ifaddrmsg a; } q;
    memset(&q, 0, sizeof q);
    q.h.nlmsg_len = sizeof q;
    q.h.nlmsg_type = RTM_GETADDR;
    q.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    q.a.ifa_family = AF_INET;
    int rc = nl_send(&q.h);
    if (rc < 0) return rc;
    int found = 0;
    for (;;) {
        int n = (int)recv(g_nl, g_buf, sizeof g_buf, 0);
        if (n < 0) { if (errno == EINTR) continue; return -errno; }
        for (struct nlmsghdr *r = (struct nlmsghdr *)g_buf; NLMSG_OK(r, n); r = NLMSG_NEXT(r, n)) {
            if (r->nlmsg_seq != q.h.nlmsg_seq) continue;
            if (r->nlmsg_type == NLMSG_DONE) return found;
            if (r->nlmsg_type == NLMSG_ERROR) return ((struct nlmsgerr *)NLMSG_DATA(r))->error;
            if (r->nlmsg_type != RTM_NEWADDR) continue;
            struct ifaddrmsg *a = NLMSG_DATA(r);
            if ((int)a->ifa_index != idx || a->ifa_prefixlen != g_addrs[i].prefix) continue;
            int alen = (int)IFA_PAYLOAD(r);
            for (struct rtattr *rta = IFA_RTA(a); RTA_OK(rta, alen); rta = RTA_NEXT(rta, alen))
                if (rta->rta_type == IFA_LOCAL && memcmp(RTA_DATA(rta), &g_addrs[i].ip, 4) == 0) found = 1;
        }
    }
}

static int drop_all(void) {
    int dropped = 0;
    for (int i = 0; i < g_count; i++) {
        int idx = ifindex_of(g_addrs[i].ifname);
        if (idx > 0 && addr_msg(RTM_DELADDR, 0, idx, i, 0) == 0) dropped++;
    }
    return dropped;
}

/* Renews the kernel lifetime of the addresses that are configured. `ip addr change` would
 * re-create a missing one (IPv4 ignores NLM_F_CREATE), so only present ones are touched. */
static void refresh_all(void) {
    for (int i = 0; i < g_count; i++) {
        int idx = ifindex_of(g_addrs[i].ifname);
        if (idx > 0 && present(idx, i) == 1) addr_msg(RTM_NEWADDR, NLM_F_REPLACE, idx, i, g_lifetime);
    }
}

static void note(int fd, uint32_t kind, uint32_t seq, uint32_t gen) {
    struct twin_fence_note n = {kind, seq, gen};
    ssize_t r = write(fd, &n, sizeof n);
    (void)r;
}

enum { IDLE, ARMED, FENCED };

static void fence_main(int cmd, int notes) {
    int state = IDLE;
    uint32_t gen = 0;
    long long deadline = 0, next_refresh = 0, next_enforce = 0;
    for (;;) {
        long long now = mono_ms(), wake = -1;
        if (state == ARMED) wake = deadline < next_refresh ? deadline : next_refresh;
        if (state == FENCED) wake = next_enforce;
        struct pollfd p = {cmd, POLLIN, 0};
        int rc = poll(&p, 1, wake < 0 ? -1 : (int)(wake > now ? wake - now : 0));
        int eof = 0;
        if (rc > 0) {
            /* Commands first: a renewal written before the deadline counts even when this
             * process was slow to read it. */
            static struct twin_fence_cmd cmds[64];
            ssize_t n = read(cmd, cmds, sizeof cmds);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) eof = 1;
            now = mono_ms();
            for (ssize_t i = 0; i < n / (ssize_t)sizeof cmds[0]; i++) {
                long long until = now + cmds[i].hold_ms;
                switch (cmds[i].op) {
                case TWIN_FENCE_TAKE:
                    gen++;
                    state = ARMED;
                    deadline = until;
                    next_refresh = now + REFRESH_MS;
                    note(notes, TWIN_FENCE_ACK, cmds[i].seq, gen);
                    break;
                case TWIN_FENCE_FEED:
                    if (state == ARMED && until > deadline) deadline = until;
                    /* A renewal after the drop: the daemon must learn it lost the addresses. */
                    if (state == FENCED) note(notes, TWIN_FENCE_FENCED, 0, gen);
                    break;
                case TWIN_FENCE_RELEASE:
                    state = IDLE;
                    note(notes, TWIN_FENCE_ACK, cmds[i].seq, gen);
                    break;
                case TWIN_FENCE_DROP:
                    drop_all();
                    state = FENCED;
                    next_enforce = now + ENFORCE_MS;
                    note(notes, TWIN_FENCE_ACK, cmds[i].seq, gen);
                    break;
                }
            }
        }
        if (eof) {
            /* The daemon is gone (killed, crashed) or stopped cleanly (then IDLE). */
            if (state != IDLE && drop_all() > 0) say("twinfs-ha fence: the daemon died holding the addresses: dropped them\n");
            _exit(0);
        }
        now = mono_ms();
        if (state == ARMED && now >= deadline) {
            drop_all();
            state = FENCED;
            next_enforce = now + ENFORCE_MS;
            note(notes, TWIN_FENCE_FENCED, 0, gen);
            say("twinfs-ha fence: the daemon did not renew its hold in time (stopped or starved): dropped the addresses\n");
        }
        if (state == ARMED && now >= next_refresh) {
            refresh_all();
            next_refresh = now + REFRESH_MS;
        }
        /* Fenced: keep the addresses off this node until the daemon takes or releases (a
         * takeip script still running when the daemon was stopped may add one back). */
        if (state == FENCED && now >= next_enforce) {
            drop_all();
            next_enforce = now + ENFORCE_MS;
        }
    }
}

int twin_fence_spawn(const char *const *ifnames, const uint32_t *ips, const int *prefixes, int count, int lifetime_s,
                     int *cmd_fd, int *note_fd) {
    if (count < 0 || count > FENCE_MAX_ADDRS) return -EINVAL;
    int cmd[2], notes[2];
    if (pipe2(cmd, O_CLOEXEC) < 0) return -errno;
    if (pipe2(notes, O_CLOEXEC) < 0) { int e = errno; close(cmd[0]); close(cmd[1]); return -e; }
    memset(g_addrs, 0, sizeof g_addrs);
    for (int i = 0; i < count; i++) {
        strncpy(g_addrs[i].ifname, ifnames[i], IFNAMSIZ - 1);
        g_addrs[i].ip = ips[i];
        g_addrs[i].prefix = prefixes[i];
    }
    g_count = count;
    g_lifetime = lifetime_s;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(cmd[0]); close(cmd[1]); close(notes[0]); close(notes[1]);
        return -e;
    }
    if (pid == 0) {
        /* Keep only stdio and the two pipe ends: a heartbeat socket held open here would hide
         * the daemon's death from the peer (no ICMP port unreachable). */
        struct rlimit rl;
        int max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? (int)rl.rlim_cur : 65536;
        for (int fd = 3; fd < max; fd++) if (fd != cmd[0] && fd != notes[1]) close(fd);
        /* Stop signals are the daemon's: the fence lives until its command pipe closes. */
        sigset_t set;
        sigfillset(&set);
        sigdelset(&set, SIGKILL);
        sigdelset(&set, SIGSEGV);
        sigdelset(&set, SIGBUS);
        sigprocmask(SIG_SETMASK, &set, NULL);
        struct sigaction ign;
        memset(&ign, 0, sizeof ign);
        ign.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &ign, NULL);
        prctl(PR_SET_NAME, "twinfs-ha-fence", 0, 0, 0);
        /* Real-time like the daemon's beat loop: a drop must not wait behind a busy CPU. */
        struct sched_param sp;
        memset(&sp, 0, sizeof sp);
        sp.sched_priority = 10;
        sched_setscheduler(0, SCHED_RR, &sp);
        g_nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
        if (g_nl < 0) { say("twinfs-ha fence: no netlink socket\n"); _exit(1); }
        fence_main(cmd[0], notes[1]);
        _exit(0);
    }
    close(cmd[0]);
    close(notes[1]);
    fcntl(cmd[1], F_SETFL, O_NONBLOCK);
    fcntl(notes[0], F_SETFL, O_NONBLOCK);
    *cmd_fd = cmd[1];
    *note_fd = notes[0];
    return pid;
}
