#!/bin/sh
# Finishes the local runtime base image's root filesystem (scripts/build-images.sh).
#
#   images/base/finish-rootfs.sh ROOTFS
#
# `mmdebstrap --variant=extract --skip=cleanup/apt/cache` has unpacked libc6,
# libgcc-s1 and libstdc++6 (and their dependencies) into ROOTFS without running
# any maintainer script, and left the .deb files in ROOTFS/var/cache/apt. This
# turns that tree into the equivalent of gcr.io/distroless/cc-debian12:nonroot,
# which the Dockerfiles use by default: the C and C++ runtime, a CA bundle, the
# user nonroot (65532), no shell, no package manager. Runs on the build host
# (needs dpkg-deb and apt-get).
set -eu
root="$1"

# dpkg metadata the way distroless keeps it (one control file per package under
# status.d), so image scanners see the packages and their versions.
mkdir -p "$root/var/lib/dpkg/status.d"
for deb in "$root"/var/cache/apt/archives/*.deb; do
  pkg="$(dpkg-deb --field "$deb" Package)"
  dpkg-deb --field "$deb" > "$root/var/lib/dpkg/status.d/$pkg"
done

# CA bundle: the certificates of Debian's ca-certificates package concatenated
# the way update-ca-certificates does (its maintainer script needs perl and a
# shell, which this image does not have).
tmp="$(mktemp -d)"
chmod 755 "$tmp"  # apt downloads as its _apt user
(cd "$tmp" && { apt-get download -q ca-certificates >/dev/null 2>&1 \
  || { apt-get update -q >/dev/null && apt-get download -q ca-certificates >/dev/null; }; })
dpkg-deb --extract "$tmp"/ca-certificates_*.deb "$tmp/x"
mkdir -p "$root/etc/ssl/certs" "$root/usr/share/doc/ca-certificates"
find "$tmp/x/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat \
  > "$root/etc/ssl/certs/ca-certificates.crt"
cp "$tmp/x/usr/share/doc/ca-certificates/copyright" "$root/usr/share/doc/ca-certificates/"
dpkg-deb --field "$tmp"/ca-certificates_*.deb > "$root/var/lib/dpkg/status.d/ca-certificates"
rm -rf "$tmp"

# Users: root, nobody and nonroot (65532, distroless's uid) with no login shell.
cat > "$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
P
cat > "$root/etc/group" <<'G'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
G
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
mkdir -p "$root/home/nonroot" "$root/root" "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
chmod 700 "$root/root"
chmod 1777 "$root/tmp"

# What a container runtime provides, or a package manager needs: not in the image.
rm -rf "$root/etc/apt" "$root/etc/dpkg" "$root/var/lib/apt" "$root/var/cache" "$root/var/log" \
  "$root/etc/hostname" "$root/etc/resolv.conf" "$root/etc/fstab" \
  "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/alternatives" \
  "$root/var/lib/dpkg/triggers" "$root/var/lib/dpkg/updates" \
  "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/arch" "$root/dev" \
  "$root/usr/share/gcc" "$root/usr/share/gdb"
mkdir -p "$root/dev" "$root/proc" "$root/sys"
