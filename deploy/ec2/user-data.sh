#!/bin/bash
# cloud-init user data for RetinaScope on an Ubuntu 24.04 LTS EC2 instance (see deploy/ec2/README.md).
#
# At first boot it installs Docker Engine and the compose plugin from Docker's apt repository,
# clones REPO_URL into /opt/retinascope, writes /etc/retinascope/retinascope.env, and installs a
# systemd unit (retinascope.service) that runs `docker compose up -d --build` at every boot.
#
# Edit the variables below before launching. Secrets are NOT written here: RETINA_API_KEY is read
# at each service start from SSM Parameter Store (SSM_API_KEY_PARAM, a SecureString), so this file
# (visible to anyone who can describe the instance) holds no secret.
#
# Progress: /var/log/retinascope-user-data.log (and /var/log/cloud-init-output.log).
set -euo pipefail

# ---------------------------------------------------------------------------- settings
REPO_URL="https://github.com/YOUR-ORG/retinascope.git" # the repository to deploy (https, or a deploy-key ssh URL)
REPO_REF="main"                                        # branch or tag
SSM_API_KEY_PARAM="/retinascope/api-key"               # SecureString with the API key (required: the service is public)
RETINA_DOMAIN=""                                       # DNS name for HTTPS (tls profile); "" = plain HTTP on 8000/8501
RETINA_BASIC_AUTH_HASH=""                              # tls: bcrypt hash of the UI login (caddy hash-password); not a secret
WEB_CONCURRENCY="1"                                    # uvicorn workers (each holds every model in memory)
RETINA_TORCH_THREADS="2"                               # threads per worker; workers x threads <= vCPUs
RETINA_BACKEND_CPUS="2"                                # CPU limit of the backend container (capped at the vCPUs below)
# c7i.large has 4 GiB: backend 2560m + UI 768m + Caddy 256m = 3.5 GiB, the rest for the OS and Docker.
RETINA_BACKEND_MEMORY="2560m"                          # memory limit of the backend container
RETINA_FRONTEND_MEMORY="768m"                          # memory limit of the UI container
# ----------------------------------------------------------------------------------------

APP_DIR=/opt/retinascope
CONF_DIR=/etc/retinascope
exec > >(tee -a /var/log/retinascope-user-data.log) 2>&1
echo "[user-data] $(date -Is) start"
export DEBIAN_FRONTEND=noninteractive

# Docker Engine + compose plugin from Docker's apt repository (Ubuntu's docker.io lacks the plugin).
apt-get update -q
apt-get install -y -q ca-certificates curl git
install -m 0755 -d /etc/apt/keyrings
curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o /etc/apt/keyrings/docker.asc
chmod a+r /etc/apt/keyrings/docker.asc
# shellcheck disable=SC1091  # the target machine's file, not this repo's
codename="$(. /etc/os-release && echo "${UBUNTU_CODENAME:-$VERSION_CODENAME}")"
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu $codename stable" \
  >/etc/apt/sources.list.d/docker.list
apt-get update -q
apt-get install -y -q docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin
systemctl enable --now docker
docker compose version

# The AWS CLI reads the API key from SSM with the instance role's credentials.
# Not a bare `snap install` under set -e: on a fresh instance snapd may still be seeding, the install
# then fails and would end this script before the service is set up. Wait, retry, and go on either way
# (retinascope-compose needs `aws` only at service start, and says so when it is missing).
if [ -n "$SSM_API_KEY_PARAM" ] && ! command -v aws >/dev/null 2>&1; then
  snap wait system seed.loaded || true
  for attempt in 1 2 3 4 5; do
    if snap install aws-cli --classic; then break; fi
    echo "[user-data] snap install aws-cli failed (attempt $attempt of 5); retrying in 15 s"
    sleep 15
  done
  command -v aws >/dev/null 2>&1 || [ -x /snap/bin/aws ] \
    || echo "[user-data] WARNING: no AWS CLI; install it (snap install aws-cli --classic), then systemctl restart retinascope"
fi
# A CPU limit above the host's CPUs makes `docker compose up` fail (e.g. cpus: 2 on a 1-vCPU instance).
ncpu="$(nproc)"
if awk -v want="$RETINA_BACKEND_CPUS" -v have="$ncpu" 'BEGIN { exit !(want > have) }'; then
  echo "[user-data] RETINA_BACKEND_CPUS=$RETINA_BACKEND_CPUS is over this host's $ncpu vCPUs: using $ncpu"
  RETINA_BACKEND_CPUS="$ncpu"
fi

# The instance's region for the AWS CLI, from the metadata service (IMDSv2).
imds_token="$(curl -fsS -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')"
aws_region="$(curl -fsS -H "X-aws-ec2-metadata-token: $imds_token" http://169.254.169.254/latest/meta-data/placement/region)"

# The code (models included: they are committed with it).
if [ ! -d "$APP_DIR/.git" ]; then
  git clone --branch "$REPO_REF" --depth 1 "$REPO_URL" "$APP_DIR"
fi

# Non-secret settings for docker compose (root-only anyway; edit and `systemctl restart retinascope`).
install -m 0750 -d "$CONF_DIR"
profiles=""
bind_address="0.0.0.0"
if [ -n "$RETINA_DOMAIN" ]; then
  profiles="tls"
  bind_address="127.0.0.1" # only Caddy (80/443) faces the network
fi
cat >"$CONF_DIR/retinascope.env" <<EOF
COMPOSE_PROFILES=$profiles
RETINA_DOMAIN=$RETINA_DOMAIN
RETINA_BIND_ADDRESS=$bind_address
WEB_CONCURRENCY=$WEB_CONCURRENCY
RETINA_TORCH_THREADS=$RETINA_TORCH_THREADS
RETINA_DECODE_THREADS=$RETINA_TORCH_THREADS
RETINA_BACKEND_CPUS=$RETINA_BACKEND_CPUS
RETINA_BACKEND_MEMORY=$RETINA_BACKEND_MEMORY
RETINA_FRONTEND_MEMORY=$RETINA_FRONTEND_MEMORY
RETINA_FRONTEND_CPUS=1
# Single quotes: the bcrypt hash holds $ signs, and this file is sourced by bash.
RETINA_BASIC_AUTH_HASH='$RETINA_BASIC_AUTH_HASH'
SSM_API_KEY_PARAM=$SSM_API_KEY_PARAM
AWS_REGION=$aws_region
EOF
chmod 0640 "$CONF_DIR/retinascope.env"

# `retinascope-compose ARGS`: docker compose in APP_DIR with the settings above and the API key
# fetched from SSM at call time (so rotating the parameter + a restart picks the new key up).
cat >/usr/local/sbin/retinascope-compose <<'EOF'
#!/bin/bash
set -euo pipefail
# systemd's PATH has no /snap/bin, where the snap AWS CLI lives.
PATH="$PATH:/snap/bin"
set -a
# shellcheck disable=SC1091
. /etc/retinascope/retinascope.env
set +a
if [ -n "${SSM_API_KEY_PARAM:-}" ]; then
  RETINA_API_KEY="$(aws ssm get-parameter --name "$SSM_API_KEY_PARAM" --with-decryption \
    --query Parameter.Value --output text)"
  export RETINA_API_KEY
fi
cd /opt/retinascope
exec docker compose "$@"
EOF
chmod 0750 /usr/local/sbin/retinascope-compose

cat >/etc/systemd/system/retinascope.service <<'EOF'
[Unit]
Description=RetinaScope (docker compose: backend, frontend, optional Caddy)
Requires=docker.service
After=docker.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
# The first start builds both images (several minutes); later ones reuse the layer cache.
TimeoutStartSec=1800
ExecStart=/usr/local/sbin/retinascope-compose up -d --build --remove-orphans
ExecStop=/usr/local/sbin/retinascope-compose down

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable retinascope.service
systemctl start retinascope.service
echo "[user-data] $(date -Is) done"
/usr/local/sbin/retinascope-compose ps
