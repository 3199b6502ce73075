#define _GNU_SOURCE
#include "CHAShims.h"
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/if_ether.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

struct arp_frame {
    struct ether_header eth;
    struct ether_arp arp;
} __attribute__((packed));

static int open_iface(const char *ifname, int *ifindex, unsigned char mac[6]) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ARP));
    if (fd < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) { int e = errno; close(fd); return -e; }
    *ifindex = ifr.ifr_ifindex;
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) { int e = errno; close(fd); return -e; }
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ARP);
    sll.sll_ifindex = *ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

static void fill(struct arp_frame *f, const unsigned char mac[6], int op, uint32_t sender_ip,
                 const unsigned char target_mac[6], uint32_t target_ip) {
    memset(f, 0, sizeof *f);
    memset(f->eth.ether_dhost, 0xff, 6);
    memcpy(f->eth.ether_shost, mac, 6);
    f->eth.ether_type = htons(ETHERTYPE_ARP);
    f->arp.arp_hrd = htons(ARPHRD_ETHER);
    f->arp.arp_pro = htons(ETHERTYPE_IP);
    f->arp.arp_hln = 6;
    f->arp.arp_pln = 4;
    f->arp.arp_op = htons(op);
    memcpy(f->arp.arp_sha, mac, 6);
    memcpy(f->arp.arp_spa, &sender_ip, 4);
    memcpy(f->arp.arp_tha, target_mac, 6);
    memcpy(f->arp.arp_tpa, &target_ip, 4);
}

static int send_frame(int fd, int ifindex, const struct arp_frame *f) {
    struct sockaddr_ll to;
    memset(&to, 0, sizeof to);
    to.sll_family = AF_PACKET;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    memset(to.sll_addr, 0xff, 6);
    if (sendto(fd, f, sizeof *f, 0, (struct sockaddr *)&to, sizeof to) < 0) return -errno;
    return 0;
}

int twin_arp_announce(const char *ifname, uint32_t ip, int count) {
    int ifindex;
    unsigned char mac[6];
    int fd = open_iface(ifname, &ifindex, mac);
    if (fd < 0) return fd;
    static const unsigned char zero[6] = {0}, bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    struct arp_frame req, rep;
    fill(&req, mac, ARPOP_REQUEST, ip, zero, ip);
    fill(&rep, mac, ARPOP_REPLY, ip, bcast, ip);
    int rc = 0;
    for (int i = 0; i < count && rc == 0; i++) {
        if (i > 0) { struct timespec ts = {0, 20 * 1000 * 1000}; nanosleep(&ts, NULL); }
        rc = send_frame(fd, ifindex, &req);
        if (rc == 0) rc = send_frame(fd, ifindex, &rep);
    }
    close(fd);
    return rc;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int twin_arp_probe(const char *ifname, uint32_t ip, int timeout_ms) {
    int ifindex;
    unsigned char mac[6];
    int fd = open_iface(ifname, &ifindex, mac);
    if (fd < 0) return fd;
    static const unsigned char zero[6] = {0};
    struct arp_frame probe;
    fill(&probe, mac, ARPOP_REQUEST, 0, zero, ip);   /* sender 0.0.0.0: a probe, RFC 5227 */
    int rc = send_frame(fd, ifindex, &probe);
    if (rc < 0) { close(fd); return rc; }
    long long deadline = now_ms() + timeout_ms, resend = now_ms() + timeout_ms / 2;
    int found = 0;
    while (!found) {
        long long left = deadline - now_ms();
        if (left <= 0) break;
        if (now_ms() >= resend) { send_frame(fd, ifindex, &probe); resend = deadline + 1; }
        struct pollfd p = {fd, POLLIN, 0};
        int n = poll(&p, 1, (int)(left < 10 ? left : 10));
        if (n < 0 && errno != EINTR) { rc = -errno; break; }
        if (n <= 0) continue;
        struct arp_frame in;
        ssize_t got = recv(fd, &in, sizeof in, 0);
        if (got < (ssize_t)sizeof in) continue;
        if (ntohs(in.eth.ether_type) != ETHERTYPE_ARP) continue;
        uint32_t spa, tpa;
        memcpy(&spa, in.arp.arp_spa, 4);
        memcpy(&tpa, in.arp.arp_tpa, 4);
        if (memcmp(in.arp.arp_sha, mac, 6) == 0) continue;
        /* Someone else claims the address (a reply, its own announcement), or probes for it
         * at the same moment (RFC 5227 2.1.1: a simultaneous probe is a conflict too). */
        if (spa == ip || (spa == 0 && tpa == ip && ntohs(in.arp.arp_op) == ARPOP_REQUEST)) found = 1;
    }
    close(fd);
    return rc < 0 ? rc : found;
}

static uint16_t csum(const void *data, size_t len, uint32_t sum) {
    const uint16_t *p = data;
    while (len > 1) { sum += *p++; len -= 2; }
    if (len) sum += *(const uint8_t *)p;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

int twin_send_tickle(uint32_t src_ip, uint16_t src_port, uint32_t dst_ip, uint16_t dst_port, int count) {
    int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_HDRINCL, &one, sizeof one);
    struct {
        struct iphdr ip;
        struct tcphdr tcp;
    } __attribute__((packed)) pkt;
    memset(&pkt, 0, sizeof pkt);
    pkt.ip.version = 4;
    pkt.ip.ihl = 5;
    pkt.ip.ttl = 64;
    pkt.ip.protocol = IPPROTO_TCP;
    pkt.ip.tot_len = htons(sizeof pkt);
    pkt.ip.saddr = src_ip;
    pkt.ip.daddr = dst_ip;
    pkt.ip.check = csum(&pkt.ip, sizeof pkt.ip, 0);
    pkt.tcp.source = src_port;
    pkt.tcp.dest = dst_port;
    pkt.tcp.doff = 5;
    pkt.tcp.ack = 1;
    pkt.tcp.window = htons(1234);
    struct { uint32_t s, d; uint8_t zero, proto; uint16_t len; } __attribute__((packed)) pseudo =
        {src_ip, dst_ip, 0, IPPROTO_TCP, htons(sizeof pkt.tcp)};
    uint32_t sum = 0;
    const uint16_t *q = (const uint16_t *)&pseudo;
    for (size_t i = 0; i < sizeof pseudo / 2; i++) sum += q[i];
    pkt.tcp.check = csum(&pkt.tcp, sizeof pkt.tcp, sum);
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = dst_ip;
    int rc = 0;
    for (int i = 0; i < count; i++) {
        if (sendto(fd, &pkt, sizeof pkt, 0, (struct sockaddr *)&to, sizeof to) < 0) { rc = -errno; break; }
    }
    close(fd);
    return rc;
}

int twin_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC) == 0 ? 0 : -errno; }
