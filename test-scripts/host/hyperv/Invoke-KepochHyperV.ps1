<#
.SYNOPSIS
    Runs the kepoch A/B series in a Hyper-V guest from the Hyper-V host and fetches the JSON results.

.DESCRIPTION
    Hyper-V CANNOT hot-add virtual processors to a running guest (the processor count is a VM setting that
    only changes while the VM is off). Runs on Hyper-V therefore cover start-up topology, idle energy and
    load -- never live hot-add. To exercise "maximum > active" and processor groups anyway, this script
    configures the guest's boot options:
        bcdedit /set {current} maxproc yes      (KeQueryMaximumProcessorCountEx reports far more than active)
        bcdedit /set {current} groupsize N      (N processors per group: several groups on a small VM)
        bcdedit /set {current} testsigning on   (to load the test-signed kepoch.sys; Secure Boot off)
    and reboots the guest when they changed.

    Steps: create the VM from a prepared Windows Server VHDX, or reuse an existing one (Generation 2,
    Secure Boot off, Guest Service Interface on); start it; wait for PowerShell Direct; apply the boot
    options; copy the driver package and the guest scripts in with Copy-VMFile; run Invoke-KepochAB (which
    hands the A/B to `kepochctl ab`) over PowerShell Direct (Invoke-Command -VMName); copy the per-round JSON
    back into ResultsPath. Compare with
    `kepoch-sim report results/*.json`.

    Run in an elevated PowerShell on the Hyper-V host (Windows PowerShell 5.1 or PowerShell 7 with the
    Hyper-V module).

.PARAMETER VMName
    Name of the test VM (created when missing and VhdPath is given).

.PARAMETER Credential
    Administrator credential inside the guest (PowerShell Direct needs one).

.PARAMETER PackagePath
    Host folder with kepoch.sys, kepoch.inf and kepochctl.exe.

.PARAMETER VhdPath
    A prepared Windows Server VHDX (used only when the VM does not exist yet).

.PARAMETER ProcessorCount
    Virtual processors (the active count in the guest).

.PARAMETER MemoryStartupBytes
    Guest memory in bytes (default 4294967296 = 4 GiB).

.PARAMETER SwitchName
    Optional virtual switch to connect (not needed: PowerShell Direct uses the VMBus).

.PARAMETER GroupSize
    Processors per group set with `bcdedit /set groupsize` (power of two, 1..64; 0 leaves it alone).

.PARAMETER NoMaxProc
    Do not set `maxproc yes` (then max == active and eager loads).

.PARAMETER Rounds
    A/B rounds (default 6); every round runs every strategy (kepochctl ab rotates their order).

.PARAMETER Strategies
    Strategies to alternate (default lazy, callback, eager).

.PARAMETER LoadRate
    Load generator rate in operations per second.

.PARAMETER LoadSeconds
    Load duration per round.

.PARAMETER ResultsPath
    Host folder for the JSON files (default .\results).

.PARAMETER GuestRoot
    Folder inside the guest for the package, scripts and results (default C:\kepoch).

.EXAMPLE
    $cred = Get-Credential Administrator
    .\Invoke-KepochHyperV.ps1 -VMName kepoch-ws2022 -VhdPath D:\vhd\ws2022.vhdx -Credential $cred `
        -PackagePath ..\..\..\target\package -ProcessorCount 4 -GroupSize 2 -Rounds 6

.EXAMPLE
    .\Invoke-KepochHyperV.ps1 -VMName kepoch-ws2022 -Credential $cred -PackagePath .\package -WhatIf
#>
[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'Medium')]
param(
    [Parameter(Mandatory = $true)] [string] $VMName,
    [Parameter(Mandatory = $true)] [System.Management.Automation.PSCredential] $Credential,
    [Parameter(Mandatory = $true)] [string] $PackagePath,
    [string] $VhdPath,
    [ValidateRange(1, 240)] [int] $ProcessorCount = 4,
    [long] $MemoryStartupBytes = 4294967296,
    [string] $SwitchName,
    [ValidateSet(0, 1, 2, 4, 8, 16, 32, 64)] [int] $GroupSize = 2,
    [switch] $NoMaxProc,
    [ValidateRange(1, 1000)] [int] $Rounds = 6,
    [string[]] $Strategies = @('lazy', 'callback', 'eager'),
    [int] $LoadRate = 100000,
    [ValidateRange(1, 86400)] [int] $LoadSeconds = 30,
    [string] $ResultsPath = (Join-Path (Get-Location) 'results'),
    [string] $GuestRoot = 'C:\kepoch'
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

<#
.SYNOPSIS
    Waits until PowerShell Direct into the VM answers; throws after TimeoutSeconds.
.PARAMETER Name
    VM name.
.PARAMETER Cred
    Guest credential.
.PARAMETER TimeoutSeconds
    How long to wait.
#>
function Wait-KepochPowerShellDirect {
    param([string] $Name, [System.Management.Automation.PSCredential] $Cred, [int] $TimeoutSeconds = 600)
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    while ((Get-Date) -lt $deadline) {
        try {
            $ok = Invoke-Command -VMName $Name -Credential $Cred -ScriptBlock { $true } -ErrorAction Stop
            if ($ok) { return }
        } catch { Start-Sleep -Seconds 5 }
    }
    throw "kepoch: PowerShell Direct into '$Name' did not answer within $TimeoutSeconds s (is the guest booted and the credential right?)."
}

if (-not (Get-Command -Name Get-VM -ErrorAction SilentlyContinue)) {
    throw 'kepoch: the Hyper-V PowerShell module is not available (Enable-WindowsOptionalFeature -Online -FeatureName Microsoft-Hyper-V-Management-PowerShell).'
}
$package = (Resolve-Path -LiteralPath $PackagePath).ProviderPath
foreach ($name in @('kepoch.sys', 'kepoch.inf', 'kepochctl.exe')) {
    if (-not (Test-Path -LiteralPath (Join-Path $package $name))) { throw "kepoch: '$name' is missing from '$package'." }
}
$guestScripts = Join-Path (Split-Path -Parent (Split-Path -Parent $PSScriptRoot)) 'guest'
if (-not (Test-Path -LiteralPath (Join-Path $guestScripts 'KepochGuest.psm1'))) {
    throw "kepoch: guest scripts not found at '$guestScripts'."
}

Write-Warning ('kepoch: Hyper-V cannot hot-add virtual processors to a running guest. This run covers start-up ' +
    'topology (maxproc: max >> active; groupsize: several groups), idle energy and load -- not live hot-add. ' +
    'Use test-scripts/host/qemu (or VMware CPU Hot Add) for hot-add.')

# 1. Create or reuse the VM.
$vm = Get-VM -Name $VMName -ErrorAction SilentlyContinue
if (-not $vm) {
    if (-not $VhdPath) { throw "kepoch: VM '$VMName' does not exist; give -VhdPath (a prepared Windows Server VHDX) to create it." }
    if ($PSCmdlet.ShouldProcess($VMName, "Create Generation 2 VM from $VhdPath")) {
        $newVm = @{ Name = $VMName; Generation = 2; MemoryStartupBytes = $MemoryStartupBytes; VHDPath = $VhdPath }
        if ($SwitchName) { $newVm['SwitchName'] = $SwitchName }
        $vm = New-VM @newVm
        # Test signing needs Secure Boot off.
        Set-VMFirmware -VMName $VMName -EnableSecureBoot Off
    }
}
if ($vm) {
    if ($vm.State -ne 'Off' -and $vm.ProcessorCount -ne $ProcessorCount) {
        Write-Warning "kepoch: '$VMName' is running with $($vm.ProcessorCount) vCPUs; the count can only change while it is off (no hot-add on Hyper-V). Keeping $($vm.ProcessorCount)."
    } elseif ($vm.State -eq 'Off' -and $PSCmdlet.ShouldProcess($VMName, "Set $ProcessorCount vCPUs, enable Guest Service Interface")) {
        Set-VMProcessor -VMName $VMName -Count $ProcessorCount
    }
    if ($PSCmdlet.ShouldProcess($VMName, 'Enable Guest Service Interface (Copy-VMFile) and start')) {
        Enable-VMIntegrationService -VMName $VMName -Name 'Guest Service Interface'
        if ((Get-VM -Name $VMName).State -ne 'Running') { Start-VM -Name $VMName }
    }
}
if ($WhatIfPreference) {
    Write-Host "kepoch: -WhatIf: would configure bcdedit (maxproc, groupsize $GroupSize, testsigning), copy $package and run $Rounds round(s)."
    return
}
Wait-KepochPowerShellDirect -Name $VMName -Cred $Credential

# 2. Boot options inside the guest (reboot when something changed).
$changed = Invoke-Command -VMName $VMName -Credential $Credential -ArgumentList (-not $NoMaxProc), $GroupSize -ScriptBlock {
    param([bool] $MaxProc, [int] $GroupSize)
    Set-StrictMode -Version Latest
    $current = @{}
    foreach ($line in (& bcdedit.exe /enum '{current}')) {
        if ("$line" -match '^\s*([A-Za-z][A-Za-z0-9]*)\s+(.+?)\s*$') { $current[$Matches[1].ToLowerInvariant()] = $Matches[2] }
    }
    $wanted = [ordered]@{ testsigning = 'on' }
    if ($MaxProc) { $wanted['maxproc'] = 'yes' }
    if ($GroupSize -gt 0) { $wanted['groupsize'] = "$GroupSize" }
    $didChange = $false
    foreach ($key in $wanted.Keys) {
        $have = $null
        if ($current.ContainsKey($key)) { $have = $current[$key] }
        $isSet = ($have -eq $wanted[$key]) -or ($wanted[$key] -in @('on', 'yes') -and $have -match '^(yes|on)$')
        if (-not $isSet) {
            $out = & bcdedit.exe /set '{current}' $key $wanted[$key] 2>&1
            if ($LASTEXITCODE -ne 0) { throw "bcdedit /set {current} $key $($wanted[$key]) failed: $($out -join ' ')" }
            $didChange = $true
        }
    }
    return $didChange
}
if ($changed) {
    Write-Host "kepoch: boot options changed in '$VMName'; restarting it."
    Restart-VM -Name $VMName -Force -Wait -For Heartbeat
    Wait-KepochPowerShellDirect -Name $VMName -Cred $Credential
}

# 3. Copy the package and the guest scripts in (Copy-VMFile: host -> guest over the Guest Service Interface).
$copies = @()
foreach ($file in Get-ChildItem -LiteralPath $package -File) { $copies += @{ Source = $file.FullName; Target = "$GuestRoot\package\$($file.Name)" } }
foreach ($file in Get-ChildItem -LiteralPath $guestScripts -File) { $copies += @{ Source = $file.FullName; Target = "$GuestRoot\scripts\$($file.Name)" } }
foreach ($copy in $copies) {
    Copy-VMFile -Name $VMName -SourcePath $copy.Source -DestinationPath $copy.Target -CreateFullPath -FileSource Host -Force
}

# 4. Install and run the A/B series over PowerShell Direct.
$guestResults = "$GuestRoot\results\$(Get-Date -Format 'yyyyMMdd-HHmmss')"
$remote = {
    param($Root, $Results, $Rounds, $Strategies, $LoadRate, $LoadSeconds)
    Set-StrictMode -Version Latest
    $ErrorActionPreference = 'Stop'
    Import-Module "$Root\scripts\KepochGuest.psm1" -Force
    $topology = Get-KepochTopology
    Install-KepochDriver -PackagePath "$Root\package" -Confirm:$false | Out-Null
    # kepochctl ab runs the rounds, writes the files and restores the registry and the service.
    $files = Invoke-KepochAB -Rounds $Rounds -OutputPath $Results -Strategies $Strategies -LoadRate $LoadRate `
        -LoadSeconds $LoadSeconds -Confirm:$false
    [pscustomobject]@{ Topology = $topology; Files = @($files | ForEach-Object { $_.FullName }) }
}
$run = Invoke-Command -VMName $VMName -Credential $Credential -ScriptBlock $remote `
    -ArgumentList $GuestRoot, $guestResults, $Rounds, $Strategies, $LoadRate, $LoadSeconds
Write-Host ("kepoch: guest topology: {0} max / {1} active in {2} group(s); hot-add supported: {3} (not exercised on Hyper-V)" -f `
        $run.Topology.max_processors, $run.Topology.active_processors, $run.Topology.max_groups, $run.Topology.hot_add_supported)

# 5. Fetch the JSON (Copy-VMFile only copies host -> guest; use a PowerShell Direct session back).
if (-not (Test-Path -LiteralPath $ResultsPath)) { New-Item -ItemType Directory -Path $ResultsPath -Force | Out-Null }
$session = New-PSSession -VMName $VMName -Credential $Credential
try {
    foreach ($remoteFile in $run.Files) {
        $local = Join-Path $ResultsPath ("hyperv-$VMName-" + (Split-Path -Leaf $remoteFile))
        Copy-Item -FromSession $session -Path $remoteFile -Destination $local -Force
        Write-Host "kepoch: fetched $local"
    }
} finally {
    Remove-PSSession -Session $session
}
Write-Host "kepoch: compare with: kepoch-sim report $ResultsPath/*.json"
